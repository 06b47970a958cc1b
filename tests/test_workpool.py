"""prefect.yaml's deployments on a `process` work pool, run by a real `prefect worker`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from tests.conftest import REPO
from tests.images import write_image_folder
from tests.project import TINY_PARAMS, env, make_project, of_runs, sh
from tests.servers import stop

pytestmark = pytest.mark.e2e

PARAMS = {**TINY_PARAMS, "tune": {"n_trials": 0}, "train": {**TINY_PARAMS["train"], "epochs": 1}}


def _children(client, run_id, names) -> dict:
    """The subflow runs started by flow run `run_id`, by flow name."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])
        )
    )
    return {names[r.flow_id]: r for r in runs}


def test_a_pool_worker_runs_a_deployment_triggered_through_the_api(
    tmp_path, prefect_server, monkeypatch
):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    source = tmp_path / "source"
    write_image_folder(source, per_class=8)
    project = make_project(tmp_path / "project", PARAMS)
    shutil.copy(REPO / "prefect.yaml", project / "prefect.yaml")
    retrain = project / "params" / "retrain.yaml"
    retrain.write_text(
        yaml.safe_dump(
            {**yaml.safe_load(retrain.read_text()), "source": "folder", "path": str(source)}
        )
    )
    monkeypatch.setenv("VISIONTUNE_PROJECT_DIR", str(project))
    monkeypatch.setenv("PREFECT_WORKER_QUERY_SECONDS", "1")
    sh(
        "prefect",
        "work-pool",
        "create",
        "visiontune",
        "--type",
        "process",
        "--overwrite",
        cwd=project,
    )
    sh("prefect", "--no-prompt", "deploy", "--all", cwd=project)

    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        ["prefect", "worker", "start", "--pool", "visiontune", "--name", "test-worker"],
        cwd=tmp_path,
        env=env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        run = run_deployment("retrain/scheduled-retrain", timeout=0)  # through the API, now
        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 420
            while not (state := client.read_flow_run(run.id).state).is_final():
                assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(1)
            assert state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
            done = client.read_flow_run(run.id)
            assert done.work_pool_name == "visiontune"
            names = {f.id: f.name for f in client.read_flows()}
            pipeline = _children(client, run.id, names)["pipeline"]
            stages = _children(client, pipeline.id, names)
            assert {"clean", "split", "augment", "tune", "train", "evaluate"} <= set(stages)
            assert all(r.state.is_completed() for r in stages.values())
            run_ids = {run.id, *(r.id for r in stages.values())}
            keys = {a.key for a in client.read_artifacts(artifact_filter=of_runs(run_ids))}
            assert {"retrain-decision", "train-summary", "evaluate-summary"} <= keys

            scheduled = client.read_deployment_by_name("retrain/scheduled-retrain")
            assert scheduled.work_pool_name == "visiontune"
            assert [s.schedule.cron for s in scheduled.schedules] == ["0 3 * * *"]
            on_demand = client.read_deployment_by_name("pipeline/on-demand")
            assert on_demand.work_pool_name == "visiontune"
            form = json.dumps(scheduled.parameter_openapi_schema)
            assert '"margin"' in form and '"minimum": 0' in form  # typed fields with limits
            train_form = on_demand.parameter_openapi_schema["definitions"]["TrainOverrides"]
            assert train_form["properties"]["lr"]["anyOf"][0]["exclusiveMinimum"] == 0
            assert "enum" in json.dumps(train_form["properties"]["batchnorm"])

            # the on-demand form's train fields: written to params/train.yaml, then run
            again = run_deployment(
                "pipeline/on-demand", parameters={"train": {"label_smoothing": 0.05}}, timeout=0
            )
            while not (state := client.read_flow_run(again.id).state).is_final():
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(1)
            assert state.is_completed(), (tmp_path / "worker.log").read_text()[-3000:]
            result = _children(client, again.id, names)
            assert {"train", "evaluate"} <= set(result) and "clean" not in result
    finally:
        stop(worker, sig=signal.SIGTERM)
        log.close()
    train_yaml = yaml.safe_load((project / "params" / "train.yaml").read_text())
    assert train_yaml["label_smoothing"] == 0.05  # only the key given changed
    assert train_yaml["epochs"] == PARAMS["train"]["epochs"]
    assert sh("dvc", "status", cwd=project).stdout.strip() == "Data and pipelines are up to date."
    registry = json.loads((project / "models" / "registry.json").read_text())
    assert registry["champion"] == 1  # the worker ran it in the project's folder
    assert os.path.isfile(project / "models" / "versions" / "v1" / "model.pt")
