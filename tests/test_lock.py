"""One project lock: a second writing command waits or refuses in one line, a killed holder's
lock is taken over, and commands started together all end finished or refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows.project import Project
from flows.project.lock import lock_path, project_lock, read_holder
from tests.images import write_collect_source
from tests.processes import start_visiontune
from tests.project import TINY_PARAMS, env, make_project, sh

QUICK = {**TINY_PARAMS, "tune": {"n_trials": 0}}


def _held_by(root: Path, pid: int, timeout: float = 120) -> None:
    path = lock_path(Project(root))
    deadline = time.monotonic() + timeout
    while (holder := read_holder(path)) is None or holder.pid != pid:
        assert time.monotonic() < deadline, f"PID {pid} did not take the lock"
        time.sleep(0.1)


def test_the_lock_is_reentrant_and_a_second_holder_waits_or_refuses(tmp_path):
    project = Project(tmp_path)
    (tmp_path / ".dvc").mkdir()
    with project_lock(project, "first"):
        with project_lock(project, "nested"):  # the same process: no deadlock
            holder = read_holder(lock_path(project))
            assert holder.pid == os.getpid() and holder.command == "first"
        child = subprocess.run(
            ["python", "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=env()
        )
        # a child of the holder (dvc repro's stages, torchrun's ranks) shares the lock
        assert child.stdout.strip() == "shared", child.stderr
    other = {**env(), "VISIONTUNE_LOCK_HOLDER": ""}
    with project_lock(project, "first"):
        refused = subprocess.run(
            ["python", "-c", CHILD, str(tmp_path)], capture_output=True, text=True, env=other
        )
    assert refused.stdout.startswith("locked: the project is locked by PID"), refused.stderr
    assert "(first, since " in refused.stdout
    with project_lock(project, "again", wait=False):  # released: free at once
        assert read_holder(lock_path(project)).command == "again"


CHILD = """
import sys
from pathlib import Path
from flows.project import Project
from flows.project.lock import ProjectLocked, project_lock
try:
    with project_lock(Project(Path(sys.argv[1])), "child", wait=False):
        print("shared")
except ProjectLocked as exc:
    print(f"locked: {exc}")
"""


@pytest.mark.e2e
def test_two_runs_at_once_one_waits_one_refuses_and_a_killed_holder_is_taken_over(
    tmp_path, prefect_server
):
    source = write_collect_source(tmp_path / "source", per_class=6)
    root = make_project(tmp_path / "project", QUICK)
    sh("visiontune", "collect", "folder", str(source), cwd=root)
    first = start_visiontune(root, "run")
    _held_by(root, first.pid)
    refused = start_visiontune(root, "run", "--no-wait")
    out, errors = refused.communicate(timeout=120)
    assert refused.returncode == 75, errors
    lines = errors.strip().splitlines()
    assert len(lines) == 1, errors
    assert lines[0].startswith(f"error: the project is locked by PID {first.pid} (visiontune run")
    waiting = start_visiontune(root, "run")
    out, errors = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, errors[-3000:]
    assert errors.startswith(f"waiting for the project lock, held by PID {first.pid}")
    assert "Traceback" not in errors and "Everything is up to date." in out
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=root).stdout

    # a holder killed with SIGKILL leaves no lock behind: the next command starts at once
    killed = start_visiontune(root, "run", "--force")
    _held_by(root, killed.pid)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    taken = sh("visiontune", "run", "--no-wait", cwd=root, timeout=600)
    assert "waiting" not in taken.stderr
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=root).stdout


@pytest.mark.e2e
def test_commands_started_together_all_finish_and_leave_the_project_clean(tmp_path, prefect_server):
    """A small stress: runs, a stage, a collect and a retrain of the same source at once
    (`make bench` starts 15: benchmarks/faults.py)."""
    n = int(os.environ.get("VISIONTUNE_STRESS", "5"))
    source = write_collect_source(tmp_path / "source", per_class=6)
    retrain = {"source": "folder", "path": str(source)}
    root = make_project(tmp_path / "project", {**QUICK, "retrain": retrain})
    sh("visiontune", "collect", "folder", str(source), cwd=root)
    kinds = [
        ("run",),
        ("stage", "split"),
        ("collect", "folder", str(source)),
        ("run", "--no-wait"),
        ("retrain",),
    ]
    procs = [start_visiontune(root, *kinds[i % len(kinds)]) for i in range(n)]
    for proc, kind in zip(procs, [kinds[i % len(kinds)] for i in range(n)], strict=True):
        out, errors = proc.communicate(timeout=900)
        assert "Traceback" not in out + errors, (kind, errors[-3000:])
        waits = [line for line in errors.splitlines() if "waiting for the project lock" in line]
        assert len(waits) <= 1
        if proc.returncode:  # refused in one line: locked (--no-wait), or inputs not there yet
            refusal = [line for line in errors.strip().splitlines() if line not in waits]
            assert len(refusal) == 1 and refusal[0].startswith("error: "), (kind, errors)
            assert proc.returncode in (2, 75), (kind, errors)
    final = sh("visiontune", "run", cwd=root, timeout=600)  # whatever a late collect changed
    assert "Traceback" not in final.stderr
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=root).stdout
    metrics = json.loads((root / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert metrics["n_test"] > 0
