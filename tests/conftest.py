"""Test setup: quiet offline env vars and one real Prefect server for the session.

Prefect reads its settings when it is imported, so PREFECT_HOME and
PREFECT_API_URL are set here, before any test module imports it. The server
itself starts only when a test asks for the `prefect_server` fixture.

Every process the tests start carries this session's tag (tests/orphans.py), so the next
session stops what a killed one left running.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# One torch (OpenMP) thread, here and in every process the tests start, unless the caller
# says otherwise. The tiny models gain nothing from a second thread on an idle 2-core
# machine (test_train: 27 s either way) and lose much when another job holds a core
# (52 s with two threads vs 31 s with one). Set before anything imports torch.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from flows.project import Project
from flows.project.environment import QUIET_OFFLINE
from flows.project.server import free_port, start_server, stop_server
from tests.orphans import OWNER, PREFIX, TAG, reap_orphans, session_tag

_ROOT = Path(tempfile.mkdtemp(prefix=PREFIX))
os.environ[TAG] = session_tag()
(_ROOT / OWNER).write_text(os.environ[TAG])
_PROJECT = Project(_ROOT)
SERVER_PROJECT = _PROJECT  # where the session server keeps its database and server.log
_PORT = free_port(0)
for _key, _value in QUIET_OFFLINE.items():
    os.environ.setdefault(_key, _value)
os.environ["PREFECT_HOME"] = str(_PROJECT.prefect_home)
# The test server's scheduler loops every 2 s (default 60) and picks up new deployments
# within 1 s (default 5), so a test can wait for a cron-created run.
os.environ.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "2")
os.environ.setdefault("PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS", "1")
os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{_PORT}/api"
os.environ.setdefault("VISIONTUNE_CACHE", str(Path.home() / ".cache" / "visiontune"))

REPO = Path(__file__).resolve().parent.parent

# DVC and Prefect set up their log handlers on the sys.stdout/stderr of their import. Import
# them now, on pytest's streams: imported first inside a CliRunner.invoke, they would keep
# that invoke's streams, closed once it returns, and every later in-process command would fail.
import dvc.repo  # noqa: E402, F401
import prefect.main  # noqa: E402, F401


def pytest_sessionstart(session):
    reap_orphans()  # servers and temp folders of test sessions that were killed


@pytest.fixture(scope="session")
def prefect_server():
    """A real Prefect server on 127.0.0.1 (temp PREFECT_HOME), stopped by PID afterwards."""
    info = start_server(_PROJECT, port=_PORT)
    assert info.api_url == os.environ["PREFECT_API_URL"], "the chosen port was taken"
    yield info


def pytest_sessionfinish(session, exitstatus):
    import sys

    if "prefect" in sys.modules:  # send buffered logs while the server still runs
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    stop_server(_PROJECT)
    shutil.rmtree(_ROOT, ignore_errors=True)
