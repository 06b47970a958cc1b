"""Multi-label end to end on real tagged emoji: a manifest with a `labels` column through
retraining (collect, every stage, the registry), `dvc repro`, predict and export, in a real
git + DVC repo with a real Prefect server."""

from __future__ import annotations

import contextlib
import json
import shutil

import pandas as pd
import pytest
import yaml

from flows.retrain import retrain_flow
from flows.stages import STAGES
from tests.multilabel_data import emoji_tags
from tests.project import TINY_PARAMS, make_project, sh

pytestmark = pytest.mark.e2e
LABELS = ["animal", "face", "female", "flag", "male", "nature"]


@pytest.fixture(scope="module")
def retrained(tmp_path_factory, prefect_server):
    """The first retrain of a project whose source is a multi-label manifest."""
    base = tmp_path_factory.mktemp("multilabel")
    emoji_tags(base / "source")
    project = make_project(base / "project", TINY_PARAMS)
    path = project / "params" / "retrain.yaml"
    path.write_text(
        yaml.safe_dump(
            yaml.safe_load(path.read_text()) | {"source": "manifest", "path": "../source/tags.csv"}
        )
    )
    first = retrain_flow(root=str(project))
    return project, first


def _cli(project, *args):
    from typer.testing import CliRunner

    from flows.cli import app

    with contextlib.chdir(project):
        result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, f"{result.output[-4000:]}\n{result.exception!r}"
    return " ".join(result.stdout.split())


def test_collect_versions_images_and_label_sets(retrained):
    project, first = retrained
    assert first["promoted"] and first["new_version"] == 1 and first["metric"] == "map_macro"
    assert json.loads((project / "data" / "task.json").read_text())["task"] == "multi_label"
    assert len(list((project / "data" / "_images").iterdir())) == 60
    sources = pd.read_csv(project / "data" / "sources.csv", dtype=str)
    assert {"labels", "original_labels"} <= set(sources.columns)


def test_every_stage_runs_on_multi_label_data_and_dvc_repro_has_nothing_to_do(retrained):
    project, _ = retrained
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(STAGES)
    repro = sh("dvc", "repro", cwd=project)
    assert "Running stage" not in repro.stdout, repro.stdout
    art = project / "artifacts"
    assert "labels" in pd.read_parquet(art / "clean" / "manifest.parquet").columns
    counts = pd.read_csv(art / "split" / "counts.csv")
    assert sorted(counts.iloc[:, 0]) == LABELS  # per label × split
    assert (art / "split" / "ledger.json").is_file()
    assert set(json.loads((art / "augment" / "balance.json").read_text())) >= {"pos_weights"}
    best = yaml.safe_load((art / "tune" / "best_params.yaml").read_text())
    assert "best_val_map" in best
    history = pd.read_csv(art / "train" / "history.csv")
    assert history["val_map"].notna().all()  # refit: auto keeps val for the thresholds
    # train.yaml's and augment.yaml's `multi_label:` blocks: no head-only epoch, flip only
    head_only = best.get("params", {}).get("freeze_epochs", 0)  # trial 0 is the block's 0
    assert history["frozen"].sum() == head_only
    steps = yaml.safe_load((art / "augment" / "train.yaml").read_text())["transform"]
    names = [step["__class_fullname__"] for step in steps["transforms"]]
    assert names == ["RandomResizedCrop", "HorizontalFlip", "Normalize", "ToTensorV2"], names
    metrics = json.loads((art / "evaluate" / "metrics.json").read_text())
    for key in ("map_macro", "map_micro", "f1_micro", "f1_samples", "subset_accuracy"):
        assert 0 <= metrics[key] <= 1, key
    assert "val_f1_micro" in metrics
    per_class = pd.read_csv(art / "evaluate" / "per_class.csv")
    assert list(per_class["class"]) == LABELS and per_class["threshold"].between(0, 1).all()
    for name in ("pr_curves.png", "pr_curves.csv", "confusion.png", "misclassified.png"):
        assert (art / "evaluate" / name).stat().st_size > 0
    shown = sh("dvc", "plots", "show", "--json", "artifacts/evaluate/pr_curves.csv", cwd=project)
    plots = json.loads(shown.stdout)["data"]
    key = next((k for k in plots if k.endswith("pr_curves.csv")), None)
    assert key is not None, list(plots)
    plotted = plots[key][0]
    assert plotted["type"] == "vega"  # the curves, one colour per label
    assert {d["label"] for d in plotted["content"]["data"]["values"]} == set(LABELS)


def test_predict_and_export_give_label_sets(retrained):
    project, _ = retrained
    shown = _cli(project, "predict", "data/_images")
    rows = pd.read_csv(project / "artifacts" / "predict" / "predictions.csv", dtype={"labels": str})
    assert list(rows.columns) == ["path", "labels", *[f"p_{c}" for c in LABELS], "error"]
    assert "60 image(s)" in shown
    scored = _cli(project, "predict", "../source/tags.csv")
    assert "mAP" in scored and "on the 60 image(s) of tags.csv" in scored
    exported = _cli(project, "export", "--format", "onnx")
    assert "exported" in exported
    onnx = next((project / "artifacts" / "export").glob("*.onnx"))
    _cli(project, "predict", "data/_images", "--model", str(onnx), "--csv", "onnx.csv")
    again = pd.read_csv(project / "onnx.csv", dtype={"labels": str})
    assert (again["labels"].fillna("") == rows["labels"].fillna("")).all()


def test_a_retrain_with_a_new_label_compares_the_models_on_map(retrained, tmp_path):
    project, _ = retrained
    shutil.copytree(project.parent, tmp_path / "copy", symlinks=True)
    copy = tmp_path / "copy" / "project"
    emoji_tags(copy.parent / "source", n_labels=7)  # more images, and a seventh label
    second = retrain_flow(root=str(copy))
    assert second["metric"] == "map_macro" and second["new_classes"] == ["women"]
    assert second["champion"] is not None and second["compared"] > 0
    assert second["promoted"] and "new classes" in second["reason"]
