"""`visiontune serve`: its deployments, and a stop with a run in flight (one line, the run
ended in the UI, its stage resumed by the next run)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from tests.images import write_image_folder
from tests.project import TINY_PARAMS, env, make_project, sh


def _serve_and_stop(root: Path, log: Path, stop) -> tuple[str, list]:
    """Serve, trigger the on-demand pipeline, `stop` the server once a stage is running;
    return serve's output and the run's tree (state names of the run and its subflows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.deployments import run_deployment

    with log.open("w") as out:
        proc = subprocess.Popen(
            ["visiontune", "serve", "--cron", "0 4 * * *", "--name", "stop-test"],
            cwd=root,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with get_client(sync_client=True) as client:

            def wait(what: str, ready) -> None:
                deadline = time.monotonic() + 180
                while not ready():
                    assert proc.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, f"not {what}\n{log.read_text()}"
                    time.sleep(0.3)

            def ours() -> set[str]:  # registered, and active again after an earlier stop
                deployments = client.read_deployments()
                return {
                    d.name
                    for d in deployments
                    if d.parameters.get("root") == str(root) and not d.paused
                }

            def children():
                parent = FlowRunFilterParentFlowRunId(any_=[run.id])
                return client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=parent)
                )

            wait("registered", lambda: {"stop-test", "on-demand"} <= ours())
            nightly = client.read_deployment_by_name("retrain/stop-test")
            assert [s.schedule.cron for s in nightly.schedules] == ["0 4 * * *"]
            run = run_deployment("pipeline/on-demand", parameters={"root": str(root)}, timeout=0)
            wait("a stage running", lambda: any(c.state.is_running() for c in children()))
            stop(proc)
            proc.wait(timeout=90)
            tree = [client.read_flow_run(run.id).state, *(c.state for c in children())]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, log.read_text()
    return log.read_text(), tree


def test_serve_stopped_by_ctrl_c_or_sigterm_ends_its_run_and_the_next_run_resumes(
    tmp_path, prefect_server
):
    source = tmp_path / "source"
    write_image_folder(source, per_class=8)
    root = make_project(tmp_path / "project", TINY_PARAMS)
    sh("visiontune", "collect", "folder", str(source), cwd=root)

    stops = {
        "SIGINT": lambda proc: os.killpg(proc.pid, signal.SIGINT),  # Ctrl-C: the whole group
        "SIGTERM": lambda proc: os.kill(proc.pid, signal.SIGTERM),  # a service manager
    }
    for name, stop in stops.items():
        text, tree = _serve_and_stop(root, tmp_path / f"serve-{name}.log", stop)
        assert "Traceback" not in text, text
        last = text.strip().splitlines()[-1]
        assert last.startswith(f"stopped by {name}; ended pipeline"), text
        assert "its stage resumes on the next run" in last
        assert tree[0].name in {"Cancelled", "Crashed"}, tree
        assert all(state.is_final() for state in tree), tree  # no ghost RUNNING in the UI

    done = sh("visiontune", "run", cwd=root, timeout=600)
    assert "Traceback" not in done.stdout + done.stderr
    assert (root / "artifacts" / "train" / "model.pt").is_file()
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=root).stdout
