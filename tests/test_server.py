"""The project-local Prefect server: loopback, stopped by PID, scheduled deployments, orphans."""

import os
import urllib.request
from pathlib import Path

from typer.testing import CliRunner

from flows.cli import app
from flows.project import Project
from flows.project.server import (
    healthy,
    parse_log_errors,
    running_server,
    server_errors,
    start_server,
    stop_server,
)

# Captured verbatim from a prefect 3.8.8 server running under SQLAlchemy 2.1.9 with one cron
# deployment: its scheduler fails on every loop and no scheduled run is ever created.
SCHEDULER_ERROR_LOG = Path(__file__).parent / "data" / "server-scheduler-error.log"


def test_the_scheduler_error_of_a_real_server_log_is_found_with_its_exception():
    errors = parse_log_errors(SCHEDULER_ERROR_LOG.read_text())
    assert len(errors) == 1
    assert errors[0].time == "20:37:45.334"
    assert errors[0].source == "schedule_recent_deployments"
    assert errors[0].message == (
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; "
        "please supply a bulk_dml decorated function"
    )
    banner_only = SCHEDULER_ERROR_LOG.read_text().split("20:37:45")[0]
    assert parse_log_errors(banner_only) == []


def test_project_server_starts_on_loopback_and_stops_by_pid(tmp_path, monkeypatch):
    project = Project(tmp_path)
    log = project.prefect_home / "server.log"
    log.parent.mkdir(parents=True)
    log.write_text(SCHEDULER_ERROR_LOG.read_text())  # an earlier server's errors: not this one's
    info = start_server(project, port=0)
    try:
        assert info.host == "127.0.0.1"
        assert healthy(info.api_url)
        assert running_server(project) == info
        assert start_server(project) == info  # reused, not a second server
        with urllib.request.urlopen(info.ui_url, timeout=10) as resp:
            assert resp.status == 200  # the UI is served offline from the wheel
        assert (project.prefect_home / "prefect.db").is_file()

        monkeypatch.chdir(tmp_path)
        status = CliRunner().invoke(app, ["server", "status"])
        assert status.exit_code == 0, status.output
        assert "running" in status.output and "error" not in status.output
        assert server_errors(project) == []

        with log.open("a") as fh:  # the running server's scheduler fails
            fh.write(SCHEDULER_ERROR_LOG.read_text().split("\n\n\n\n", 1)[1])
        status = CliRunner().invoke(app, ["server", "status"])
        assert status.exit_code == 3, status.output
        line = " ".join(status.output.split())
        assert "logged 1 error(s)" in line and "scheduled runs may be missing" in line
        assert "schedule_recent_deployments: sqlalchemy.exc.InvalidRequestError" in line
        start = CliRunner().invoke(app, ["server", "start"])
        assert start.exit_code == 0 and "InvalidRequestError" in start.output
    finally:
        assert stop_server(project)
    try:
        os.kill(info.pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    assert running_server(project) is None
    assert not stop_server(project)


def _running(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_a_killed_test_session_leaves_no_server_behind_after_the_next_session_start(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tests.conftest import REPO
    from tests.project import env

    pid_file = tmp_path / "server.pid"
    (tmp_path / "test_inner.py").write_text(
        "import time\n"
        "from pathlib import Path\n\n"
        "def test_holds_a_server(prefect_server):\n"
        f"    Path({str(pid_file)!r}).write_text(str(prefect_server.pid))\n"
        "    time.sleep(600)\n"
    )
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    child_env = {
        **env(),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    pytest_args = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tests.conftest",
        "-q",
        "-p",
        "no:cacheprovider",
    ]
    session = subprocess.Popen(
        [*pytest_args, "test_inner.py"],
        cwd=tmp_path,
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server_pid = None
    try:
        deadline = time.monotonic() + 240
        while not pid_file.is_file() or not pid_file.read_text():
            assert session.poll() is None, "the inner session ended before its server ran"
            assert time.monotonic() < deadline, "the inner session's server did not start"
            time.sleep(0.5)
        server_pid = int(pid_file.read_text())
        # the killed session's temp folder: PREFECT_HOME is <it>/.prefect
        session_root = Path(psutil.Process(server_pid).environ()["PREFECT_HOME"]).parent
        session.send_signal(signal.SIGKILL)  # no pytest hook runs
        session.wait(timeout=30)
        time.sleep(1)
        assert _running(server_pid), "the server should outlive the killed pytest"
        assert session_root.is_dir()

        nxt = subprocess.run(
            [*pytest_args, "test_nothing.py"],
            cwd=tmp_path,
            env=child_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert nxt.returncode == 0, nxt.stdout[-2000:] + nxt.stderr[-2000:]
        assert not _running(server_pid), "the next session start left the orphaned server running"
        assert not session_root.exists()
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(timeout=30)
        if server_pid and psutil.pid_exists(server_pid):
            os.killpg(server_pid, signal.SIGKILL)


def test_dvc_repro_without_a_server_starts_the_projects_server_once(tmp_path, monkeypatch):
    """Every stage of `dvc repro` is its own `visiontune stage` process: the first starts the
    project's server, the later ones use it, and the runs stay in its database for the UI."""
    import json

    from tests.images import write_collect_source
    from tests.project import TINY_PARAMS, make_project, sh

    monkeypatch.delenv("PREFECT_API_URL")
    monkeypatch.delenv("PREFECT_HOME")
    source = write_collect_source(tmp_path / "source", per_class=4)
    root = make_project(tmp_path / "project", TINY_PARAMS)
    project = Project(root)
    try:
        sh("visiontune", "collect", "folder", str(source), cwd=root)
        repro = sh("dvc", "repro", "split", cwd=root)
        output = repro.stdout + repro.stderr
        assert output.count("started the project's Prefect server for this and later") == 1
        assert "Starting temporary server" not in output
        assert "Running stage 'split'" in output
        info = running_server(project)
        assert info is not None and info.host == "127.0.0.1"
        request = urllib.request.Request(
            f"{info.api_url}/flow_runs/filter", data=b"{}", method="POST",
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as resp:
            names = [r["name"].split(" · ")[0] for r in json.load(resp)]
        assert {"clean", "split"} <= set(names)
    finally:
        stop_server(project)
