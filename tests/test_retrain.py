"""Scheduled retraining end to end, on real tiny trainings.

One champion is trained per module (from a CSV manifest) and copied for each test that
changes it: a manifest that grows with a new class and new preprocessing, a cron-created
run on the project's Prefect server, no new data, and a champion kept by the margin.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from flows.retrain import retrain_flow
from params import AugmentParams, CleanParams, RetrainParams
from tasks.registry import compare_models, decide, predict_test, read_registry
from tests.images import write_image_folder
from tests.project import TINY_PARAMS, env, make_project, sh

PARAMS = {
    **TINY_PARAMS,
    "tune": {"n_trials": 0},
    "train": {**TINY_PARAMS["train"], "epochs": 1, "freeze_epochs": 1},
}
MANIFEST = "../source/labels.csv"  # relative: resolved against the project


def _set(project: Path, stage: str = "retrain", **values) -> None:
    path = project / "params" / f"{stage}.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **values}))


def _add_to_manifest(source: Path, per_class: int, seed: int, classes: tuple[str, ...]) -> None:
    """Write new shape images under source/images and append their rows to labels.csv."""
    paths = write_image_folder(source / "images", per_class, seed=seed, classes=classes)
    manifest = source / "labels.csv"
    new = not manifest.is_file()
    with manifest.open("a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["label", "path"])
        writer.writerows([p.parent.name, p.relative_to(source).as_posix()] for p in paths)


@pytest.fixture(scope="module")
def champion(tmp_path_factory, prefect_server) -> Path:
    """A project whose first retrain (two classes, from a manifest) promoted v1."""
    base = tmp_path_factory.mktemp("champion")
    _add_to_manifest(base / "source", 10, seed=0, classes=("circle", "square"))
    project = make_project(base / "project", PARAMS)
    _set(project, source="manifest", path=MANIFEST)
    first = retrain_flow(root=str(project))
    assert first["promoted"] and first["new_version"] == 1 and first["champion"] is None
    assert first["reason"].startswith("no champion yet")
    assert read_registry(project / "models").versions[0].data_version == first["data_version"]
    return base


def _copy(champion: Path, dest: Path) -> Path:
    """The champion's project and source, copied (tests change them)."""
    shutil.copytree(champion, dest / "copy", symlinks=True)
    return dest / "copy" / "project"


@pytest.fixture(scope="module")
def grown(champion, tmp_path_factory) -> tuple[Path, dict]:
    """The manifest grows (a new class, more images) and clean/augment params change."""
    project = _copy(champion, tmp_path_factory.mktemp("grown"))
    _add_to_manifest(project.parent / "source", 5, seed=7, classes=("circle", "square"))
    _add_to_manifest(project.parent / "source", 10, seed=8, classes=("triangle",))
    _set(project, "clean", max_side=64)
    _set(project, "augment", image_size=40)
    result = retrain_flow(root=str(project))
    return project, result


def test_a_growing_manifest_is_collected_and_the_new_class_decision_is_recorded(grown):
    project, result = grown
    assert result["promoted"] and result["new_version"] == 2
    assert result["new_classes"] == ["triangle"]
    assert result["reason"].startswith("promoted: new classes ['triangle'] (")
    assert "image(s) of known classes: challenger accuracy=" in result["reason"]
    assert result["champion"] is not None and result["compared"] > 0
    registry = read_registry(project / "models")
    assert registry.champion == 2
    assert [d.promoted for d in registry.decisions] == [True, True]
    assert registry.decisions[-1].new_classes == ["triangle"]
    assert registry.versions[1].data_version == result["data_version"]
    sources = pd.read_csv(project / "data" / "sources.csv")
    assert len(sources) == 40 and set(sources["label"]) == {"circle", "square", "triangle"}


def _compare(project: Path, challenger: int, champion: int):
    """(comparison, test split) of two registry versions on the project's current split."""
    split = pd.read_parquet(project / "artifacts" / "split" / "split.parquet")
    versions = project / "models" / "versions"
    comparison = compare_models(
        versions / f"v{challenger}" / "model.pt",
        versions / f"v{champion}" / "model.pt",
        split,
        project / "data",
    )
    return comparison, split[split["split"] == "test"]


def test_the_new_classes_policy_decides_on_real_models(grown):
    project, _ = grown
    comparison, test = _compare(project, challenger=2, champion=1)
    assert comparison.new_classes == ["triangle"]
    assert comparison.new_class_images == (test["label"] == "triangle").sum()
    assert comparison.compared == (test["label"] != "triangle").sum()

    def verdict(**values) -> tuple[bool, str]:
        return decide(comparison, RetrainParams(**values))

    promoted, reason = verdict(new_classes="promote")
    assert promoted and reason.startswith("promoted: new classes ['triangle']")
    promoted, reason = verdict(new_classes="reject")
    assert not promoted and "new_classes is 'reject'" in reason
    promoted, reason = verdict(new_classes="compare_known", margin=1.0)  # cannot be beaten
    assert not promoted
    assert reason.startswith(f"champion kept on the {comparison.compared} image(s) of known")
    assert "not compared: new classes ['triangle']" in reason
    old = comparison.shared_champion["accuracy"]
    new = comparison.shared_challenger["accuracy"]
    promoted, _ = verdict(new_classes="compare_known", margin=0.0)
    assert promoted == (new > old)


def test_a_class_the_data_no_longer_has_replaces_a_champion_that_predicts_it(grown):
    project, _ = grown
    # v1 (circle, square) against v2 (+ triangle): as after the triangles were removed
    comparison, test = _compare(project, challenger=1, champion=2)
    assert comparison.removed_classes == ["triangle"] and comparison.new_classes == []
    assert comparison.compared == (test["label"] != "triangle").sum()
    promoted, reason = decide(comparison, RetrainParams(margin=1.0))
    assert promoted and reason.startswith("promoted: classes ['triangle'] are no longer in")
    promoted, reason = decide(comparison, RetrainParams(removed_classes="compare", margin=1.0))
    assert not promoted and reason.startswith("champion kept: challenger accuracy=")


def test_the_champion_is_scored_with_its_own_decoding_and_eval_pipeline(grown):
    """v1 was trained on a 40 px clean cache at 32 px; the project is now at 64 px and 40 px."""
    from tasks.augment import build_pipelines
    from tasks.clean import clean_one
    from tasks.train import load_model

    project, result = grown
    v1 = project / "models" / "versions" / "v1" / "model.pt"
    net, meta = load_model(v1)
    assert meta["image_size"] == 32
    split = pd.read_parquet(project / "artifacts" / "split" / "split.parquet")
    test = split[(split["split"] == "test") & (split["label"] != "triangle")]

    def probabilities(max_side: int, image_size: int) -> np.ndarray:
        """v1's outputs on the raw test files, decoded at max_side, evaluated at image_size."""
        _, pipe = build_pipelines(
            AugmentParams(image_size=image_size), tuple(meta["mean"]), tuple(meta["std"])
        )
        tensors = []
        for rel in test["path"]:
            image, _ = clean_one(
                (project / "data" / rel).read_bytes(), CleanParams(max_side=max_side)
            )
            tensors.append(pipe(image=np.asarray(image))["image"])
        with torch.no_grad():
            return torch.softmax(net(torch.stack(tensors)), 1).double().numpy()

    own = probabilities(max_side=40, image_size=32)  # how v1 was trained
    scored = predict_test(v1, test, project / "data").probs
    np.testing.assert_allclose(scored, own, atol=1e-5)
    todays = probabilities(max_side=64, image_size=32)  # today's clean cache
    assert not np.allclose(todays, own, atol=1e-3), "the test cannot tell the two apart"
    labels = [meta["classes"].index(label) for label in test["label"]]
    assert result["champion"] == pytest.approx(float(np.mean(own.argmax(1) == labels)))


def test_a_cron_created_run_retrains_on_the_project_server(champion, tmp_path, prefect_server):
    """`visiontune serve` registers a cron deployment; the server's scheduler creates the run.

    The cron has a seconds field (croniter's sixth), so a run comes due within 5 s instead
    of at the next minute; the test server's scheduler loop is shortened in conftest.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        DeploymentFilter,
        DeploymentFilterName,
        FlowRunFilter,
        FlowRunFilterId,
    )

    from flows.project.server import LOG, describe_errors, server_errors
    from tests.conftest import SERVER_PROJECT

    project = _copy(champion, tmp_path)  # no new data: the retrain is quick
    name = f"cron-{os.getpid()}"
    proc = subprocess.Popen(
        ["visiontune", "serve", "--cron", "* * * * * */5", "--name", name],
        cwd=project,
        env={**env(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deployment = None
    try:
        deadline = time.monotonic() + 240
        done = None
        with get_client(sync_client=True) as client:
            while done is None:
                assert proc.poll() is None, "visiontune serve exited"
                if time.monotonic() > deadline:
                    errors = server_errors(SERVER_PROJECT, prefect_server)
                    log = SERVER_PROJECT.prefect_home / LOG
                    pytest.fail(
                        f"no cron-created run completed in 240 s; {describe_errors(errors, log)}"
                    )
                time.sleep(1)
                found = client.read_deployments(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
                )
                if not found:
                    continue
                deployment = found[0]
                runs = client.read_flow_runs(
                    deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[name]))
                )
                done = next((r for r in runs if r.state and r.state.is_completed()), None)
        assert done.auto_scheduled, "the run was not created by the scheduler"
        assert [s.schedule.cron for s in deployment.schedules] == ["* * * * * */5"]
        assert done.parameters["root"] == str(project)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"])),
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[done.id])),
            )
        assert [a.description.split(" (")[0] for a in artifacts] == ["no new data"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
        if deployment is not None:
            with get_client(sync_client=True) as client:
                client.delete_deployment(deployment.id)


def test_without_new_data_nothing_retrains_and_a_better_champion_is_kept(champion, tmp_path):
    project = _copy(champion, tmp_path)
    root = str(project)
    registry = read_registry(project / "models")
    assert registry.champion == 1
    assert (project / "models" / "versions" / "v1" / "model.pt").is_file()
    first = registry.decisions[0]

    second = retrain_flow(root=root)
    assert second["decision"] == "no new data"
    assert second["data_version"] == first.data_version
    assert len(read_registry(project / "models").decisions) == 1

    _add_to_manifest(project.parent / "source", 3, seed=5, classes=("circle", "square"))
    _set(project, margin=0.99, commit=True)
    third = retrain_flow(root=root)
    assert not third["promoted"]
    assert third["reason"].startswith("champion kept") and "margin 0.99" in third["reason"]
    assert third["data_version"] != first.data_version
    assert third["new_classes"] == [] and third["compared"] > 0
    registry = read_registry(project / "models")
    assert registry.champion == 1 and len(registry.versions) == 1
    assert [d.promoted for d in registry.decisions] == [True, False]
    log = sh("git", "log", "-1", "--format=%s", cwd=project).stdout
    assert log.startswith("retrain: champion kept")
    committed = sh("git", "show", "HEAD:data.dvc", cwd=project).stdout
    assert third["data_version"] in committed

    # the labelling tool's export drops rows (images deleted there): with mirror they go
    manifest = project.parent / "source" / "labels.csv"
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join(rows[:-4]) + "\n")
    gone = {
        f"{label}/{path.replace('/', '__')}"
        for label, path in (row.split(",") for row in rows[-4:])
    }
    _set(project, mirror=True)
    fourth = retrain_flow(root=root)
    assert fourth["data_version"] != third["data_version"]
    assert sorted(fourth["collect"]["removed"]) == sorted(gone)
    sources = set(pd.read_csv(project / "data" / "sources.csv")["path"])
    assert len(sources) == len(rows) - 5 and not sources & gone
    assert all((project / "data" / p).is_file() for p in sources)
    assert not any((project / "data" / p).exists() for p in gone)
    assert len(read_registry(project / "models").decisions) == 3


def test_every_collect_source_is_a_retrain_source_and_needs_its_path(tmp_path):
    from params import ParamsError, load_params

    for source in ("folder", "manifest", "urls"):
        path = tmp_path / f"{source}.yaml"
        path.write_text(f"source: {source}\n")
        with pytest.raises(ParamsError, match=f"source: {source} needs path: <"):
            load_params(RetrainParams, path)
    path.write_text("source: urls\npath: nightly.txt\nlabel: cat\nmax_mb: 2\nnew_classes: reject\n")
    params = load_params(RetrainParams, path)
    assert (params.label, params.max_mb, params.new_classes) == ("cat", 2, "reject")
    path.write_text("source: demo\nnew_classes: sometimes\n")
    with pytest.raises(ParamsError, match="new_classes"):
        load_params(RetrainParams, path)


def test_a_retrain_source_can_be_a_multi_label_manifest(tmp_path, prefect_server):
    """retrain.yaml's label_sep, label_columns and allow_empty reach the collect step."""
    import json

    from flows.project import Project
    from flows.retrain import collect_source
    from params import ParamsError, load_params

    source = tmp_path / "source"
    paths = write_image_folder(source, per_class=1)  # circle, square, triangle
    rows = ["path,labels", f"{paths[0].relative_to(source)},Big Dog|beach"]
    rows += [f"{paths[1].relative_to(source)},", f"{paths[2].relative_to(source)},beach"]
    (source / "tags.csv").write_text("\n".join(rows) + "\n")
    project = make_project(tmp_path / "project")
    _set(project, source="manifest", path="../source/tags.csv", label_sep="|", allow_empty=True)
    params = load_params(RetrainParams, project / "params" / "retrain.yaml")
    collected = collect_source(Project(project), params)
    assert (collected["new"], collected["refused"]) == (3, [])
    sources = pd.read_csv(project / "data" / "sources.csv", dtype=str, keep_default_na=False)
    assert sources["labels"].tolist() == ["beach big_dog", "", "beach"]
    assert json.loads(sources["original_labels"][0]) == ["beach", "Big Dog"]
    task = json.loads((project / "data" / "task.json").read_text())
    assert task == {"task": "multi_label", "allow_empty": True}

    defaults = RetrainParams()  # single-label collect unless the keys are set
    assert (defaults.label_sep, defaults.label_columns, defaults.allow_empty) == (" ", None, False)
    (tmp_path / "bad.yaml").write_text("label_sep: '/'\n")
    with pytest.raises(ParamsError, match="label_sep"):
        load_params(RetrainParams, tmp_path / "bad.yaml")
