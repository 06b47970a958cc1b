"""Orchestration overhead at scale: no-op `dvc repro`, no-op `visiontune run`, `dvc status`.

    python -m benchmarks.orchestration [--images 10000] [--repeat 3] [--keep DIR]

Builds a real project (git + DVC, this repo's dvc.yaml, params and code) with
`images` generated JPEG/PNG files, starts its Prefect server on 127.0.0.1,
runs the whole pipeline once (the stage work), then times the commands a user
runs when nothing changed, `repeat` times each (median), as subprocesses
exactly as typed in a shell. Goals: no-op `dvc repro` < 2 s, no-op
`visiontune run` < 5 s, and `visiontune --help` < 1 s. The server is stopped
by its PID and the project deleted afterwards (unless --keep).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.report import Result, at_most, result, stopwatch
from benchmarks.workspace import ScaleProject, scale_workspace


def timed(cmd: list[str], root: Path) -> float:
    from tests.project import sh

    with stopwatch() as t:
        sh(*cmd, cwd=root)
    return t[0]


def measure(project: ScaleProject, repeat: int = 3) -> list[Result]:
    from tests.project import sh

    rows = []
    commands = {
        "no-op `dvc repro`": (["dvc", "repro"], 2.0),
        "no-op `visiontune run`": (["visiontune", "run"], 5.0),
        "`dvc status`": (["dvc", "status"], None),
    }
    for measure_name, (cmd, goal) in commands.items():
        median = statistics.median(timed(cmd, project.root) for _ in range(repeat))
        rows.append(
            result(
                "orchestration",
                f"{measure_name}, {project.images} images",
                median,
                unit=" s",
                goal=(at_most, goal) if goal else None,
                detail=f"median of {repeat}; the stage work took {project.total:.0f} s",
            )
        )
    help_s = statistics.median(timed(["visiontune", "--help"], project.root) for _ in range(repeat))
    rows.append(
        result(
            "orchestration",
            "`visiontune --help` start-up",
            help_s,
            unit=" s",
            goal=(at_most, 1.0),
            detail=f"median of {repeat}; heavy imports (torch, Prefect, DVC) wait for a command",
        )
    )
    status = sh("dvc", "status", cwd=project.root).stdout
    assert "up to date" in status, f"the pipeline is not up to date after the run:\n{status}"
    return rows


def run(images: int = 10000, repeat: int = 3, keep: Path | None = None) -> list[Result]:
    with scale_workspace(images, keep) as project:
        return measure(project, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, default=None, help="build in DIR and keep it")
    args = parser.parse_args()
    run(args.images, args.repeat, args.keep)


if __name__ == "__main__":
    main()
