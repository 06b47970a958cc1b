"""The data stages through `dvc repro` (each stage's real `visiontune stage` command): manifest
collect with a grouping column, clean's cache surviving `dvc repro`, stable splits with folds,
the balance plan."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from flows.collect import run_collect
from params import CleanParams
from tasks.clean import clean_dataset
from tasks.shards import SHARDS, ShardReader
from tests.images import write_collect_source, write_image_folder
from tests.project import make_project, sh

PARAMS = {
    "clean": {"max_side": 40},
    "split": {"group_by": "group", "folds": 3},
    "augment": {"image_size": 32, "preview_per_class": 2, "balance": "class_weights"},
}


def _decoded(output: str) -> tuple[int, int]:
    found = re.search(r"clean: decoded (\d+) of (\d+) file", output)
    assert found, output[-3000:]
    return int(found.group(1)), int(found.group(2))


def _manifest_csv(source, groups_of: dict[str, str]) -> pd.DataFrame:
    rows = [
        {"path": p.relative_to(source).as_posix(), "label": p.parent.name.title(), "group": g}
        for p in sorted(source.rglob("*.*"))
        if p.suffix in (".png", ".jpg")
        for g in [groups_of.get(p.name, "")]
    ]
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server):
    base = tmp_path_factory.mktemp("data-pipeline")
    source = write_collect_source(base / "source", per_class=12)
    # three subjects photographed across classes: each must stay in one split and fold
    groups = {
        f"{kind}_0_{i:03d}.{ext}": f"subject{i}"
        for kind in ("circle", "square", "triangle")
        for i, ext in ((0, "jpg"), (1, "png"), (2, "jpg"))
    }
    _manifest_csv(source, groups).to_csv(source / "manifest.csv", index=False)
    root = make_project(base / "project", PARAMS)
    run_collect("manifest", str(source / "manifest.csv"), str(root))  # in-process: see test_collect
    first = sh("dvc", "repro", "augment", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "first data", cwd=root)
    return root, source, groups, first


def test_stages_run_through_dvc_repro(project):
    root, _, _, first = project
    decoded, total = _decoded(first.stdout + first.stderr)
    assert (decoded, total) == (37, 37)  # all new (broken.png is decoded, then rejected)
    art = root / "artifacts"
    rejected = pd.read_csv(art / "clean" / "rejected.csv")
    assert rejected.values.tolist() == [
        ["circle/circle__broken.png", "corrupt", "OSError: image file is truncated"]
    ]
    manifest = pd.read_parquet(art / "clean" / "manifest.parquet")
    assert set(manifest["original_label"]) == {"Circle", "Square", "Triangle"}
    plan = json.loads((art / "augment" / "balance.json").read_text())
    assert plan["strategy"] == "class_weights"
    assert plan["class_counts"] == {
        label: int(n)
        for label, n in pd.read_csv(art / "split" / "counts.csv")
        .set_index("label")["train"]
        .items()
    }


def test_groups_share_a_split_and_a_fold(project):
    root, *_ = project
    split = pd.read_parquet(root / "artifacts" / "split" / "split.parquet")
    grouped = split[split["group"] != ""]
    assert grouped["group"].nunique() == 3
    assert (grouped.groupby("group")[["split", "fold"]].nunique() == 1).all().all()
    assert split["fold"].dtype == "int64"
    trainval = split[split["split"] != "test"]
    assert trainval["fold"].between(0, 2).all()
    assert (split.loc[split["split"] == "test", "fold"] == -1).all()
    folds = pd.read_csv(root / "artifacts" / "split" / "folds.csv")
    assert list(folds.columns) == ["label", "fold_0", "fold_1", "fold_2"]
    for name in ("train", "val", "test"):
        listed = pd.read_csv(root / "artifacts" / "split" / f"{name}.csv")
        assert sorted(listed["path"]) == sorted(split.loc[split["split"] == name, "path"])


def test_adding_images_decodes_only_them_and_moves_no_old_image(project, tmp_path):
    root, source, groups, _ = project
    before = pd.read_parquet(root / "artifacts" / "split" / "split.parquet").set_index("path")
    write_image_folder(source, per_class=1, seed=3)
    _manifest_csv(source, groups).to_csv(source / "manifest.csv", index=False)
    run_collect("manifest", str(source / "manifest.csv"), str(root))  # in-process: see test_collect
    shards_before = set((root / "artifacts" / "clean" / SHARDS).iterdir())
    second = sh("dvc", "repro", "augment", cwd=root)
    assert _decoded(second.stdout + second.stderr) == (3, 40)
    shards_after = set((root / "artifacts" / "clean" / SHARDS).iterdir())
    assert len(shards_after - shards_before) == 1  # one new shard, beside the old one

    after = pd.read_parquet(root / "artifacts" / "split" / "split.parquet").set_index("path")
    assert len(after) == len(before) + 3
    old = after.loc[before.index]
    assert old["split"].tolist() == before["split"].tolist()
    assert old["fold"].tolist() == before["fold"].tolist()

    # the incremental result is exactly a full clean of the same data
    full = clean_dataset(root / "data", tmp_path / "full", CleanParams(**PARAMS["clean"]))
    incremental = pd.read_parquet(root / "artifacts" / "clean" / "manifest.parquet")
    columns = [c for c in incremental.columns if c not in ("original_label", "source", "group")]
    expected = pd.DataFrame([r.__dict__ for r in full.records])[columns]
    assert incremental[columns].equals(expected)
    assert "Data and pipelines are up to date." in sh("dvc", "status", "augment", cwd=root).stdout


def test_dvc_checkout_restores_a_matching_cache(project):
    root = project[0]
    clean = root / "artifacts" / "clean"
    now = {name: (root / name).read_text() for name in ("dvc.lock", "data.dvc")}
    sh("git", "checkout", "HEAD", "--", "dvc.lock", "data.dvc", cwd=root)  # the first data
    sh("dvc", "checkout", "data.dvc", "clean", "split", "augment", cwd=root)
    manifest = pd.read_parquet(clean / "manifest.parquet")
    assert len(manifest) == 36 and len(list((clean / SHARDS).glob("*.npy"))) == 1
    reader = ShardReader(clean)
    assert [reader.image(sha).shape[2] for sha in manifest["sha256"]] == [3] * 36
    assert "Data and pipelines are up to date." in sh("dvc", "status", "augment", cwd=root).stdout
    for name, text in now.items():
        (root / name).write_text(text)
    sh("dvc", "checkout", "data.dvc", "clean", "split", "augment", cwd=root)
    assert len(pd.read_parquet(clean / "manifest.parquet")) == 39
    assert "Data and pipelines are up to date." in sh("dvc", "status", "augment", cwd=root).stdout


def test_run_until_a_stage_stops_there(project):
    root = project[0]
    # dvc repro augment ran the data stages; tune, train and evaluate were never run
    assert "tune" in sh("dvc", "status", cwd=root).stdout
    until = sh("visiontune", "run", "--until", "augment", cwd=root)
    assert "Everything is up to date." in until.stdout
    assert not (root / "artifacts" / "tune").exists()
    bad = sh("visiontune", "run", "--until", "nope", cwd=root, check=False)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_run_without_data_says_to_collect_first(tmp_path):
    root = make_project(tmp_path / "empty")
    proc = sh("visiontune", "run", cwd=root, check=False)
    assert proc.returncode == 2
    assert "visiontune collect" in proc.stderr and "Traceback" not in proc.stderr


def test_data_that_cannot_train_a_classifier_ends_in_one_clear_line(tmp_path, prefect_server):
    write_image_folder(tmp_path / "source", per_class=6, classes=("circle",))
    root = make_project(tmp_path / "one-class")
    run_collect("folder", str(tmp_path / "source"), str(root))
    proc = sh("visiontune", "run", cwd=root, check=False)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: only one class has usable images (circle: 6)"), last
    assert (root / "artifacts" / "clean" / "manifest.parquet").is_file()  # clean still ran


def test_a_stage_on_stale_inputs_names_them_in_one_line(project):
    root = project[0]
    # tune never ran here, so train has no best_params.yaml to read
    proc = sh("visiontune", "stage", "train", cwd=root, check=False)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1, proc.stderr[-3000:]
    assert "tune" in error[0] and "visiontune run --until train" in error[0]
