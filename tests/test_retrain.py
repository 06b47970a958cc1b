"""Scheduled retraining end to end: first model, no new data, new data with a kept champion."""

from __future__ import annotations

import yaml

from flows.retrain import retrain_flow
from tasks.registry import read_registry
from tests.images import write_image_folder
from tests.project import TINY_PARAMS, make_project, sh


def _set(project, **retrain) -> None:
    path = project / "params" / "retrain.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **retrain}))


def test_retrain_promotes_stops_without_new_data_and_keeps_a_better_champion(
    tmp_path, prefect_server
):
    source = tmp_path / "source"
    write_image_folder(source, per_class=12)
    params = {**TINY_PARAMS, "tune": {"n_trials": 0}}
    project = make_project(tmp_path / "project", params)
    _set(project, source="folder", path=str(source))
    root = str(project)

    first = retrain_flow(root=root)
    assert first["promoted"] and first["new_version"] == 1 and first["champion"] is None
    registry = read_registry(project / "models")
    assert registry.champion == 1
    assert (project / "models" / "versions" / "v1" / "model.pt").is_file()
    assert registry.versions[0].data_version == first["data_version"]

    second = retrain_flow(root=root)
    assert second["decision"] == "no new data"
    assert len(read_registry(project / "models").decisions) == 1

    write_image_folder(source, per_class=3, seed=5)  # new images arrive
    _set(project, margin=0.99, commit=True)
    third = retrain_flow(root=root)
    assert not third["promoted"]
    assert third["reason"].startswith("champion kept") and "margin 0.99" in third["reason"]
    assert third["data_version"] != first["data_version"]
    registry = read_registry(project / "models")
    assert registry.champion == 1 and len(registry.versions) == 1
    assert [d.promoted for d in registry.decisions] == [True, False]
    log = sh("git", "log", "-1", "--format=%s", cwd=project).stdout
    assert log.startswith("retrain: champion kept")
    committed = sh("git", "show", "HEAD:data.dvc", cwd=project).stdout
    assert third["data_version"] in committed
