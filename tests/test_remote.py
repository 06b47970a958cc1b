"""Data and artifacts on a DVC remote: run and push in one clone, pull and use them in another.

The full round trip uses a plain directory remote (what a NAS mount or `dvc remote add -d
store /mnt/nas/x` gives); an S3 remote (dvc-s3) is tested against moto's S3-compatible
server on 127.0.0.1. GCS and SSH go through the same `dvc push`/`dvc pull` with dvc-gs or
dvc-ssh installed.
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


def _clone(origin: Path, to: Path, *targets: str) -> Path:
    sh("git", "clone", "-q", str(origin), str(to), cwd=origin.parent)
    sh("dvc", "pull", "-q", *targets, cwd=to)
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


def test_an_s3_remote_round_trip(tmp_path, monkeypatch):
    import boto3

    from flows.project.server import free_port
    from tests.servers import s3_server

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    write_image_folder(tmp_path / "origin" / "data", per_class=2)
    origin = make_project(tmp_path / "origin")
    with s3_server(free_port(19000)) as endpoint:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="visiontune")
        sh("dvc", "remote", "add", "-d", "s3", "s3://visiontune/store", cwd=origin)
        sh("dvc", "remote", "modify", "s3", "endpointurl", endpoint, cwd=origin)
        sh("dvc", "add", "-q", "data", cwd=origin)
        sh("git", "add", "-A", cwd=origin)
        sh("git", "commit", "-qm", "data on S3", cwd=origin)
        sh("dvc", "push", "-q", cwd=origin)
        stored = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket="visiontune")
        assert stored["KeyCount"] >= 6  # the 6 images (+ the directory listing)
        clone = _clone(origin, tmp_path / "clone", "data.dvc")  # no pipeline run here
    pulled = sorted(p.relative_to(clone) for p in (clone / "data").rglob("*.*"))
    assert pulled == sorted(p.relative_to(origin) for p in (origin / "data").rglob("*.*"))
    assert all(_md5(clone / p) == _md5(origin / p) for p in pulled)
