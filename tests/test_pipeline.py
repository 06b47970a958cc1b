"""End to end: a real git + DVC repo, real images, a real Prefect server, every stage."""

from __future__ import annotations

import contextlib
import json
import shutil

import onnx
import pandas as pd
import pytest
import torch
import yaml

from flows.stages import STAGES
from tasks.tune import SEARCHED
from tests.images import write_collect_source
from tests.project import TINY_PARAMS, make_project, of_runs, sh

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def ran_project(tmp_path_factory, prefect_server):
    base = tmp_path_factory.mktemp("pipeline")
    source = write_collect_source(base / "source", per_class=14)
    (source / "triangle").rename(source / "Triangle Shapes")  # the folder: triangle_shapes
    project = make_project(base / "project", TINY_PARAMS)
    collected = sh("visiontune", "collect", "folder", str(source), cwd=project)
    run = sh("visiontune", "run", cwd=project)
    return project, collected, run


def test_collect_versions_the_data_with_dvc(ran_project):
    project, collected, _ = ran_project
    assert "43 new, 0 changed, 0 unchanged" in collected.stdout
    dvc_file = yaml.safe_load((project / "data.dvc").read_text())
    assert dvc_file["outs"][0]["nfiles"] == 43 + 2  # + data/labels.csv and data/sources.csv
    assert (project / "data" / "circle" / "broken.png").is_file()


def test_run_records_every_stage_and_leaves_nothing_to_do(ran_project):
    project, _, run = ran_project
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    status = sh("dvc", "status", cwd=project)
    assert "Data and pipelines are up to date." in status.stdout
    repro = sh("dvc", "repro", cwd=project)
    assert "Data and pipelines are up to date." in repro.stdout
    assert "Running stage" not in repro.stdout
    again = sh("visiontune", "run", cwd=project)
    assert "Everything is up to date." in again.stdout
    assert "accuracy" in run.stdout  # the metrics table is printed


def test_outputs_of_each_stage(ran_project):
    project, _, _ = ran_project
    art = project / "artifacts"
    rejected = pd.read_csv(art / "clean" / "rejected.csv")
    assert rejected.set_index("path").loc["circle/broken.png", "reason"] == "corrupt"
    manifest = pd.read_parquet(art / "clean" / "manifest.parquet")
    assert len(manifest) == 42
    split = pd.read_parquet(art / "split" / "split.parquet")
    assert set(split["split"]) == {"train", "val", "test"}
    assert (art / "augment" / "preview.png").stat().st_size > 0
    best = yaml.safe_load((art / "tune" / "best_params.yaml").read_text())
    assert best["source"] == SEARCHED
    assert best["trials"].get("COMPLETE", 0) + best["trials"].get("PRUNED", 0) == 2
    assert set(best["params"]) == {"lr", "weight_decay", "freeze_epochs"}
    assert (art / "tune" / "study" / "study.db").is_file()
    assert len(pd.read_csv(art / "tune" / "trials.csv")) == 2
    assert (art / "tune" / "plots" / "history.png").is_file()
    assert (art / "train" / "model.pt").is_file()
    live = json.loads((art / "train" / "live" / "metrics.json").read_text())
    assert "train_accuracy" in live and "val_accuracy" not in live  # refit after the search
    history = pd.read_csv(art / "train" / "history.csv")
    assert history["val_accuracy"].isna().all()
    metrics = json.loads((art / "evaluate" / "metrics.json").read_text())
    for key in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["accuracy"] > 1 / 3, metrics  # three shapes: above chance
    assert metrics["n_test"] == (split["split"] == "test").sum()
    for key in ("roc_auc_ovr", "log_loss", "ece", "top2_accuracy"):
        assert key in metrics, key
    predictions = pd.read_csv(art / "evaluate" / "predictions.csv")
    assert list(predictions.columns[:3]) == ["path", "actual", "predicted"]
    for name in ("confusion.png", "reliability.png", "misclassified.png"):
        assert (art / "evaluate" / name).stat().st_size > 0, name
    confusion = pd.read_csv(art / "evaluate" / "confusion.csv").set_index("actual")
    assert confusion.to_numpy().sum() == metrics["n_test"]
    # the reports speak the labels collected, not the folder names
    assert list(confusion.index) == ["circle", "square", "Triangle Shapes"]
    assert set(predictions["actual"]) == {"circle", "square", "Triangle Shapes"}
    plots = json.loads(sh("dvc", "plots", "show", "--json", cwd=project).stdout)["data"]
    assert "confusion_normalized" in plots and "artifacts/evaluate/predictions.csv" in plots


def _cli(project, *args):
    """A visiontune command in this process (CliRunner), run in PROJECT: the console script
    itself runs in the fixture and below; these only prove the commands' own wiring."""
    from typer.testing import CliRunner

    from flows.cli import app

    with contextlib.chdir(project):
        return CliRunner().invoke(app, list(args))


def _ok(result):
    assert result.exit_code == 0, f"{result.output[-4000:]}\n{result.exception!r}"
    return result.stdout


def test_use_the_trained_model_from_the_cli(ran_project):
    project, _, _ = ran_project
    predicted = _ok(_cli(project, "predict", "data", "--top-k", "2"))
    rows = pd.read_csv(project / "artifacts" / "predict" / "predictions.csv")
    # the user's own labels, not the folder names the logits index
    labels = {"circle", "square", "Triangle Shapes"}
    assert len(rows) == 43 and set(rows["predicted"].dropna()) <= labels
    assert set(rows["top2"].dropna()) <= labels and "Triangle Shapes" in set(rows["top1"])
    assert "43 image(s), 1 unreadable" in predicted
    # data/ is an ImageFolder tree: each image's folder names its class, so predict scores it
    assert set(rows["actual"]) == labels
    ok = rows[rows["error"].isna()]
    right = int((ok["actual"] == ok["predicted"]).sum())
    assert f"accuracy {right / 42:.3f} on the 42 image(s) in a folder named after" in predicted
    meta = torch.load(project / "artifacts" / "train" / "model.pt", weights_only=True)
    assert meta["classes"] == ["circle", "square", "triangle_shapes"]
    assert meta["labels"] == ["circle", "square", "Triangle Shapes"]
    exported = " ".join(
        _ok(_cli(project, "export", "--format", "onnx", "--quantize", "int8")).split()
    )
    assert "same top-1 for all" in exported and "input: uint8 RGB pixels" in exported
    export = project / "artifacts" / "export"
    onnx_meta = onnx.load(export / "model.onnx").metadata_props
    assert json.loads({p.key: p.value for p in onnx_meta}["labels"])[2] == "Triangle Shapes"
    assert "int8: " in exported and "agreement with PyTorch" in exported
    # the INT8 file predicts through the same command, same table and CSV
    int8 = " ".join(
        _ok(_cli(project, "predict", "data", "--model", str(export / "model.int8.onnx"))).split()
    )
    quantized = pd.read_csv(project / "artifacts" / "predict" / "predictions.csv")
    assert "43 image(s), 1 unreadable" in int8 and "model.int8.onnx" in int8
    assert (quantized["predicted"] == rows["predicted"]).mean() >= 0.9
    # a gate that cannot pass: the file is removed, one error line with both numbers
    refused = _cli(project, "export", "--quantize", "int8", "--min-agreement", "100.1")
    assert refused.exit_code == 1 and not (export / "model.int8.onnx").exists()
    assert "int8 export refused and removed: agreement with PyTorch" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    wrong = _cli(project, "export", "--format", "torchscript", "--quantize", "int8")
    assert wrong.exit_code == 2 and "--quantize needs --format onnx" in wrong.stderr
    found = _ok(_cli(project, "lr-find", "--steps", "12"))
    assert "suggested lr" in found
    assert (project / "artifacts" / "lr_find" / "lr_find.png").stat().st_size > 0
    no_folds = _cli(project, "crossval")
    assert no_folds.exit_code == 2
    assert "params/split.yaml" in no_folds.stderr


def test_prefect_recorded_the_pipeline_and_its_stage_subflows(ran_project):
    from prefect.client.orchestration import get_client

    project, _, _ = ran_project
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
        runs = [r for r in client.read_flow_runs() if r.parameters.get("root") == str(project)]
        pipeline = [r for r in runs if names[r.flow_id] == "pipeline"]
        assert len(pipeline) == 1  # the no-op second run answered from DVC: no flow run
        first = min(pipeline, key=lambda r: r.start_time)
        stage_runs = {}
        for r in runs:
            if r.parent_task_run_id is not None:
                parent = client.read_task_run(r.parent_task_run_id)
                if parent.flow_run_id == first.id:
                    stage_runs[names[r.flow_id]] = r
        assert set(stage_runs) == set(STAGES)
        data = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"][:8]
        for name, r in stage_runs.items():
            assert r.name.startswith(f"{name} · data {data} · params "), r.name
        assert all(r.state.is_completed() for r in [first, *stage_runs.values()])
        run_ids = {r.id for r in stage_runs.values()}
        keys = {a.key for a in client.read_artifacts(artifact_filter=of_runs(run_ids))}
        last_lines = {name: _last_own_log_line(client, r.id) for name, r in stage_runs.items()}
    for name, line in last_lines.items():  # each stage's log ends with its summary line
        assert line.startswith(f"{name}: "), (name, line)
    assert all(f in last_lines["evaluate"] for f in ("accuracy", "macro F1", "worst class"))
    assert {
        "clean-summary",
        "split-summary",
        "augment-preview",
        "tune-trials",
        "train-summary",
        "train-curves",
        "evaluate-summary",
        "evaluate-per-class",
        "evaluate-confusion",
    } <= keys


def _last_own_log_line(client, run_id) -> str:
    """The run's last log message before Prefect's own "Finished in state ..." line."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    logs = client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])),
        sort=LogSort.TIMESTAMP_DESC,
        limit=20,
    )
    own = [g.message for g in logs if not g.message.startswith(("Finished in state", "Beginning"))]
    return own[0] if own else ""


def test_dvc_repro_alone_gives_the_same_data_outputs(ran_project, tmp_path):
    project, _, _ = ran_project
    other = tmp_path / "other"
    shutil.copytree(
        project, other, ignore=shutil.ignore_patterns("artifacts", "dvc.lock", "cache", "tmp")
    )
    sh("dvc", "repro", cwd=other)
    first = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    second = yaml.safe_load((other / "dvc.lock").read_text())["stages"]
    for stage in ("clean", "split"):
        assert first[stage]["outs"] == second[stage]["outs"], stage
    assert "Data and pipelines are up to date." in sh("dvc", "status", cwd=other).stdout
    metrics = json.loads((other / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert metrics["accuracy"] > 1 / 3, metrics  # three shapes: above chance
