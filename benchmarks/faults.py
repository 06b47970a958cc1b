"""The fault tests at a larger size than the suite runs them: commands started together, kills.

    python -m benchmarks.faults [--stress 15] [--kill-points 8]

The suite starts 5 commands together and kills a run at 2 moments; here the same tests
run with `VISIONTUNE_STRESS` commands (runs, a stage, collects, retrains, `--no-wait` runs)
and `VISIONTUNE_KILL_POINTS` kill moments spread over a whole run. Each row says whether every
check of the test held (each command finished or refused in one line, `dvc status` clean,
results equal to an uninterrupted run) and how long it took.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import Result

REPO = Path(__file__).resolve().parent.parent
TESTS = {  # pytest -k expressions
    "stress": "tests/test_lock.py -k test_commands_started_together",
    "kills": "tests/test_faults.py -k test_a_run_killed_at_any_moment",
}


def _pytest(test: str, env: dict[str, str]) -> tuple[bool, float, str]:
    """(passed, seconds, the last line pytest printed) of one test in its own process."""
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *test.split()],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode:
        print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n", flush=True)
    return proc.returncode == 0, time.perf_counter() - started, lines[-1] if lines else ""


def _row(measure: str, passed: bool, seconds: float, detail: str) -> Result:
    row = Result("faults", measure, seconds, " s", "every check holds", passed, detail)
    print(row.line(), flush=True)
    return row


def run(stress: int = 15, kill_points: int = 8) -> list[Result]:
    passed, seconds, last = _pytest(TESTS["stress"], {"VISIONTUNE_STRESS": str(stress)})
    rows = [
        _row(
            f"{stress} commands started together (runs, stage, collect, retrain, --no-wait)",
            passed,
            seconds,
            f"each finished or refused in one line, dvc status clean: {last}",
        )
    ]
    passed, seconds, last = _pytest(TESTS["kills"], {"VISIONTUNE_KILL_POINTS": str(kill_points)})
    rows.append(
        _row(
            f"`visiontune run` killed with SIGKILL at {kill_points} moments of a run",
            passed,
            seconds,
            f"each finished by the next run with the same results: {last}",
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stress", type=int, default=15, help="commands started together")
    parser.add_argument("--kill-points", type=int, default=8, help="moments a run is killed at")
    args = parser.parse_args()
    run(args.stress, args.kill_points)


if __name__ == "__main__":
    main()
