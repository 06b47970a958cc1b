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
