"""One row per measured goal, printed as it is measured and collected into results.md."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Result:
    benchmark: str
    measure: str
    value: float  # the ratio (or time, or exponent) the goal is about
    unit: str = "×"
    goal: str = ""  # e.g. "≥ 2×"; empty when there is no goal
    met: bool | None = None
    detail: str = ""  # the absolute figures behind the ratio

    def line(self) -> str:
        verdict = {True: "met", False: "MISSED", None: ""}[self.met]
        return (
            f"[{self.benchmark}] {self.measure}: {self.value:.3g}{self.unit} "
            f"(goal {self.goal or '-'}) {verdict}  {self.detail}"
        ).rstrip()


def at_least(value: float, goal: float) -> bool:
    return value >= goal


def at_most(value: float, goal: float) -> bool:
    return value <= goal


def result(
    benchmark: str,
    measure: str,
    value: float,
    unit: str = "×",
    goal: tuple[Callable[[float, float], bool], float] | None = None,
    detail: str = "",
) -> Result:
    """A row, judged against `goal` = (at_least | at_most, threshold), printed at once."""
    text, met = "", None
    if goal is not None:
        check, threshold = goal
        text = f"{'≥' if check is at_least else '≤'} {threshold:g}{unit}"
        met = check(value, threshold)
    row = Result(benchmark, measure, value, unit, text, met, detail)
    print(row.line(), flush=True)
    return row


def share_of(benchmark: str, measure: str, part: float, whole: float, detail: str) -> Result:
    """`part` as a percentage of `whole` (incremental work against a full run): goal ≤ 5 %."""
    return result(benchmark, measure, 100 * part / whole, "%", (at_most, 5.0), detail)


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then t[0] is the elapsed seconds."""
    box = [0.0]
    started = time.perf_counter()
    try:
        yield box
    finally:
        box[0] = time.perf_counter() - started


def markdown(rows: list[Result], header: str) -> str:
    lines = [
        header,
        "",
        "| benchmark | measure | goal | measured | met | details |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "–"}[r.met]
        lines.append(
            f"| {r.benchmark} | {r.measure} | {r.goal or '–'} | {r.value:.3g}{r.unit} | {met} "
            f"| {r.detail} |"
        )
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[Result], header: str, path: Path) -> None:
    from tasks.files import write_text_atomic

    write_text_atomic(path, markdown(rows, header))
