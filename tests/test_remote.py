"""Data and artifacts on a DVC remote: run and push in one clone, pull and use them in another.

The remote is a plain directory (what a NAS mount or `dvc remote add -d store /mnt/nas/x`
gives); S3, GCS and SSH remotes go through the same `dvc push`/`dvc pull` with the dvc-s3,
dvc-gs or dvc-ssh plugin installed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from tests.images import write_image_folder
from tests.project import TINY_PARAMS, make_project, sh

pytestmark = pytest.mark.e2e

PARAMS = {**TINY_PARAMS, "tune": {"n_trials": 0}, "train": {**TINY_PARAMS["train"], "epochs": 1}}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _clone(origin: Path, to: Path) -> Path:
    sh("git", "clone", "-q", str(origin), str(to), cwd=origin.parent)
    sh("dvc", "pull", "-q", cwd=to)
    return to


def _up_to_date(project: Path) -> None:
    status = sh("dvc", "status", cwd=project)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    repro = sh("dvc", "repro", cwd=project)
    assert "Data and pipelines are up to date." in repro.stdout, repro.stdout
    assert "Running stage" not in repro.stdout, repro.stdout


def test_push_then_pull_in_a_fresh_clone_needs_no_recompute(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=8)
    origin = make_project(tmp_path / "origin", PARAMS)
    sh("dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"), cwd=origin)
    sh("visiontune", "collect", "folder", str(source), cwd=origin)
    sh("visiontune", "run", cwd=origin)
    sh("git", "add", "-A", cwd=origin)
    sh("git", "commit", "-qm", "data, pipeline run, remote", cwd=origin)
    sh("dvc", "push", "-q", cwd=origin)

    clone = _clone(origin, tmp_path / "clone")
    model = Path("artifacts/train/model.pt")
    assert _md5(clone / model) == _md5(origin / model)
    assert sorted(p.name for p in (clone / "data").iterdir()) == sorted(
        p.name for p in (origin / "data").iterdir()
    )
    _up_to_date(clone)
    predicted = sh("visiontune", "predict", str(source / "circle"), cwd=clone)
    assert "circle_0_000.jpg" in predicted.stdout
    assert (clone / "artifacts/predict/predictions.csv").is_file()

    # retrain with push: true versions the new champion under models/ and pushes it
    retrain = origin / "params" / "retrain.yaml"
    settings = yaml.safe_load(retrain.read_text())
    settings.update(source="folder", path=str(source), commit=True, push=True)
    retrain.write_text(yaml.safe_dump(settings))
    sh("git", "commit", "-qam", "retrain settings", cwd=origin)
    sh("visiontune", "retrain", cwd=origin)
    assert sh("git", "tag", "--list", cwd=origin).stdout.split() == ["model-v1"]

    second = _clone(origin, tmp_path / "second")
    pulled = second / "models" / "versions" / "v1" / "model.pt"
    assert _md5(pulled) == _md5(origin / model)
    assert '"champion": 1' in (second / "models" / "registry.json").read_text()
    _up_to_date(second)
