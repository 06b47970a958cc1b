import os
import urllib.request

from flows.project import Project
from flows.server import healthy, running_server, start_server, stop_server


def test_project_server_starts_on_loopback_and_stops_by_pid(tmp_path):
    project = Project(tmp_path)
    info = start_server(project, port=0)
    try:
        assert info.host == "127.0.0.1"
        assert healthy(info.api_url)
        assert running_server(project) == info
        assert start_server(project) == info  # reused, not a second server
        with urllib.request.urlopen(info.ui_url, timeout=10) as resp:
            assert resp.status == 200  # the UI is served offline from the wheel
        assert (project.prefect_home / "prefect.db").is_file()
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


def test_serve_registers_a_scheduled_deployment(tmp_path, prefect_server):
    import subprocess
    import time

    from prefect.client.orchestration import get_client

    from tests.conftest import REPO
    from tests.project import env

    proc = subprocess.Popen(
        ["visiontune", "serve", "--cron", "0 4 * * *", "--name", "test-nightly"],
        cwd=REPO,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        deployment = None
        with get_client(sync_client=True) as client:
            while deployment is None and time.monotonic() < deadline:
                found = [d for d in client.read_deployments() if d.name == "test-nightly"]
                deployment = found[0] if found else None
                time.sleep(1)
        assert deployment is not None, "no deployment registered within 120 s"
        assert deployment.parameters["root"] == str(REPO)
        assert [s.schedule.cron for s in deployment.schedules] == ["0 4 * * *"]
        with get_client(sync_client=True) as client:
            flow = client.read_flow(deployment.flow_id)
        assert flow.name == "retrain"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
