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
        proc = subprocess.Popen(
            ["visiontune", "run"],
            cwd=root,
            env=env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
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
