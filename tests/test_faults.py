"""Faults a run must survive: its Prefect server killed mid-stage."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
import yaml

from flows.project import Project
from flows.project.server import running_server, start_server, stop_server
from tests.images import write_collect_source
from tests.processes import start_visiontune
from tests.project import TINY_PARAMS, env, make_project, sh

pytestmark = pytest.mark.e2e

SLOW_TRAIN = {
    **TINY_PARAMS,
    "tune": {"n_trials": 0},
    "train": {**TINY_PARAMS["train"], "epochs": 40, "patience": 100},
}


def test_a_run_whose_server_dies_ends_in_one_line_and_the_next_run_resumes(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("PREFECT_HOME")
    source = write_collect_source(tmp_path / "source", per_class=6)
    root = make_project(tmp_path / "project", SLOW_TRAIN)
    project = Project(root)
    checkpoint = root / "artifacts" / "train" / "checkpoint.pt"
    try:
        sh("visiontune", "collect", "folder", str(source), cwd=root)
        server = start_server(project, port=0)
        proc = start_visiontune(root, "run")
        deadline = time.monotonic() + 240
        while not checkpoint.is_file():  # training has saved an epoch
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        out, errors = proc.communicate(timeout=90)
        assert time.monotonic() - killed < 30  # bounded: no minutes of client retries
        assert proc.returncode == 69, errors[-3000:]
        assert "Traceback" not in errors and "Traceback" not in out
        last = errors.strip().splitlines()[-1]
        assert last.startswith("error: the Prefect server at ") and "stopped answering" in last
        # the stages that finished before stay recorded
        lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
        assert {"clean", "split", "augment", "tune"} <= set(lock) and "evaluate" not in lock

        start_server(project, port=0)
        again = sh("visiontune", "run", cwd=root, timeout=600)
        assert "resuming from the checkpoint after epoch" in again.stdout + again.stderr
        status = sh("dvc", "status", cwd=root)
        assert "Data and pipelines are up to date." in status.stdout
    finally:
        if running_server(project):
            stop_server(project)


# kill points, as fractions of an uninterrupted run's time; VISIONTUNE_KILL_POINTS=N spreads N
KILL_POINTS = int(os.environ.get("VISIONTUNE_KILL_POINTS", "2"))


def _results(root) -> dict:
    """What a run produced: the manifest, the split, the search's choice and the metrics."""
    import json

    import pandas as pd

    art = root / "artifacts"
    frames = {
        name: pd.read_parquet(art / name).sort_values("sha256").to_dict("list")
        for name in ("clean/manifest.parquet", "split/split.parquet")
    }
    best = yaml.safe_load((art / "tune" / "best_params.yaml").read_text())
    # a trial killed mid-run is recorded as FAIL and the next run runs its own: the numbering
    # and the trial counts say so; the choice and its score must not change
    for bookkeeping in ("best_trial", "trials"):
        best.pop(bookkeeping)
    return {
        **frames,
        "best_params": best,
        "metrics": json.loads((art / "evaluate" / "metrics.json").read_text()),
    }


def test_a_run_killed_at_any_moment_is_finished_by_the_next_with_the_same_results(
    tmp_path, monkeypatch
):
    import shutil

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("PREFECT_HOME")
    source = write_collect_source(tmp_path / "source", per_class=6)
    params = {**TINY_PARAMS, "tune": {"n_trials": 1, "epochs": 1}}
    root = make_project(tmp_path / "project", params)
    project = Project(root)
    try:
        sh("visiontune", "collect", "folder", str(source), cwd=root)
        start_server(project, port=0)
        started = time.monotonic()
        sh("visiontune", "run", cwd=root, timeout=600)
        whole = time.monotonic() - started
        expected = _results(root)
        for i in range(KILL_POINTS):
            delay = whole * (i + 0.5) / KILL_POINTS
            shutil.rmtree(root / "artifacts")
            proc = subprocess.Popen(  # not piped: unread output would stall it
                ["visiontune", "run", "--force"],
                cwd=root,
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            again = sh("visiontune", "run", cwd=root, timeout=600, check=False)
            assert again.returncode == 0, f"after a kill at {delay:.1f} s:\n{again.stderr[-3000:]}"
            status = sh("dvc", "status", cwd=root)
            assert "Data and pipelines are up to date." in status.stdout, (delay, status.stdout)
            got = _results(root)
            assert got == expected, f"after a kill at {delay:.1f} s of {whole:.1f} s"
    finally:
        if running_server(project):
            stop_server(project)
