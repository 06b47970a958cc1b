"""The split stage: stable, stratified, group- and near-duplicate-aware, k folds."""

import hashlib
import json

import pandas as pd
import pytest

from params import SplitParams
from tasks.split import SplitError, fold_counts, plan_splits, split_counts


def _manifest(n_per_class: int, classes=("a", "b", "c"), start: int = 0) -> pd.DataFrame:
    rows = []
    for label in classes:
        for i in range(start, start + n_per_class):
            sha = hashlib.sha256(f"{label}{i}".encode()).hexdigest()
            rows.append({"path": f"{label}/{i}.png", "label": label, "sha256": sha})
    return pd.DataFrame(rows)


def test_split_is_deterministic_and_stratified():
    manifest = _manifest(400)
    params = SplitParams(train=0.7, val=0.15, test=0.15, seed=3)
    first, second = plan_splits(manifest, params).frame, plan_splits(manifest, params).frame
    assert first["split"].tolist() == second["split"].tolist()
    counts = split_counts(first)
    for label in "abc":
        assert counts.loc[label, "train"] / 400 == pytest.approx(0.7, abs=0.07)
        assert counts.loc[label, "test"] / 400 == pytest.approx(0.15, abs=0.05)


def test_adding_images_never_moves_old_ones():
    params = SplitParams()
    before = plan_splits(_manifest(50), params).frame.set_index("path")["split"]
    grown = pd.concat([_manifest(50), _manifest(30, start=50)], ignore_index=True)
    after = plan_splits(grown.sample(frac=1, random_state=1), params).frame.set_index("path")[
        "split"
    ]
    assert after.loc[before.index].tolist() == before.tolist()


def test_seed_changes_the_assignment():
    manifest = _manifest(100)
    a = plan_splits(manifest, SplitParams(seed=0)).frame["split"]
    b = plan_splits(manifest, SplitParams(seed=1)).frame["split"]
    assert (a != b).any()


def test_a_class_without_training_images_fails_clearly():
    manifest = pd.concat([_manifest(30, classes=("a",)), _manifest(4, classes=("rare",))])
    params = SplitParams(train=0.01, val=0.01, test=0.98)
    with pytest.raises(SplitError, match=r"\['rare'\] have no training image"):
        plan_splits(manifest, params)
    with pytest.raises(SplitError, match="empty"):
        plan_splits(manifest.iloc[0:0], SplitParams())
    with pytest.raises(SplitError, match=r"only one class has usable images \(a: 30\)"):
        plan_splits(manifest[manifest["label"] == "a"], SplitParams())
    two_tiny = pd.concat([_manifest(2, classes=("x",)), _manifest(2, classes=("y",))])
    with pytest.raises(SplitError, match=r"no image drew the test split \(4 image"):
        plan_splits(two_tiny, SplitParams())


def test_a_tiny_class_goes_to_train_with_a_clear_message():
    manifest = pd.concat([_manifest(40, classes=("a",)), _manifest(2, classes=("rare",))])
    plan = plan_splits(manifest, SplitParams(train=0.01, val=0.01, test=0.98))
    rare = plan.frame[plan.frame["label"] == "rare"]
    assert rare["split"].tolist() == ["train", "train"]
    assert any("['rare'] have fewer images than the 3 splits" in m for m in plan.messages)


def test_near_duplicate_groups_never_straddle_splits():
    manifest = _manifest(200)
    groups = manifest["sha256"].copy()
    for start in range(0, 600, 6):  # groups of 6 images (of one class)
        groups.iloc[start : start + 6] = manifest["sha256"].iloc[start : start + 6].min()
    manifest["dup_group"] = groups
    split = plan_splits(manifest, SplitParams(folds=4)).frame
    per_group = split.groupby("dup_group")[["split", "fold"]].nunique()
    assert (per_group == 1).all().all()
    assert split["split"].nunique() == 3  # groups still spread over the splits


def test_grouping_column_keeps_rows_together_across_classes():
    manifest = _manifest(100)
    manifest["subject"] = [f"s{i % 37}" if i % 5 else "" for i in range(len(manifest))]
    split = plan_splits(manifest, SplitParams(group_by="subject", folds=3)).frame
    named = split[split["subject"] != ""]
    assert (named.groupby("subject")[["split", "fold"]].nunique() == 1).all().all()
    assert named["label"].nunique() == 3  # a subject spans classes and still stays together
    alone = split[split["subject"] == ""]
    expected = plan_splits(manifest.drop(columns="subject"), SplitParams(folds=3)).frame
    assert alone["split"].tolist() == expected.loc[alone.index, "split"].tolist()
    with pytest.raises(SplitError, match="'site' is not a column"):
        plan_splits(manifest, SplitParams(group_by="site"))


def test_k_fold_assignment():
    manifest = _manifest(300)
    params = SplitParams(folds=5, seed=2)
    split = plan_splits(manifest, params).frame
    folded = split[split["split"] != "test"]
    assert split["fold"].dtype == "int64"
    assert set(folded["fold"]) == set(range(5))
    assert (split.loc[split["split"] == "test", "fold"] == -1).all()
    table = fold_counts(split, 5)
    for label in "abc":
        share = table.loc[label] / table.loc[label].sum()
        assert share.to_numpy() == pytest.approx([0.2] * 5, abs=0.07)
    # deterministic, and adding images never moves an old image's fold
    grown = pd.concat([manifest, _manifest(50, start=300)], ignore_index=True)
    after = plan_splits(grown, params).frame.set_index("path")
    before = split.set_index("path")
    assert after.loc[before.index, "fold"].tolist() == before["fold"].tolist()
    assert "fold" not in plan_splits(manifest, SplitParams()).frame.columns


def test_a_single_fold_is_a_params_error(tmp_path):
    from params import ParamsError, load_params

    path = tmp_path / "split.yaml"
    path.write_text("folds: 1\n")
    with pytest.raises(ParamsError, match=r"split.yaml: folds: folds must be 0"):
        load_params(SplitParams, path)


def _shipped_split(layout: dict[str, int]) -> pd.DataFrame:
    """A manifest collected from root/<split>/<label>/…: `layout` = images per class and folder."""
    parts = []
    for folder, n in layout.items():
        part = _manifest(n, start=len(parts) * 1000)
        parts.append(part.assign(folder_split=folder))
    return pd.concat(parts, ignore_index=True)


def test_a_tree_shipped_split_keeps_its_val_and_test_folders():
    manifest = _shipped_split({"train": 200, "val": 20, "test": 30})
    split = plan_splits(manifest, SplitParams()).frame
    assert (split["split"] == split["folder_split"]).all()

    # no val/ folder: validation is drawn from train/ only, at train:val, and test/ stays test
    manifest = _shipped_split({"train": 400, "test": 30})
    plan = plan_splits(manifest, SplitParams())
    split = plan.frame
    test_folder = split["folder_split"] == "test"
    assert (split.loc[test_folder, "split"] == "test").all()
    drawn = split.loc[~test_folder, "split"].astype(str).value_counts()
    assert set(drawn.index) == {"train", "val"}
    assert drawn["val"] / drawn.sum() == pytest.approx(0.15 / 0.85, abs=0.03)
    assert any("90 test image(s) from its folders" in m for m in plan.messages)

    # a train/ image keeps the split it drew before (stable as the tree's other folders grow)
    first = split.set_index("path")["split"]
    grown = pd.concat([manifest, _manifest(5, start=5000).assign(folder_split="test")])
    again = plan_splits(grown, SplitParams()).frame.set_index("path")["split"]
    assert again.loc[first.index].tolist() == first.tolist()

    # folder_split: false (or a tree without split folders) draws every image as usual
    off = plan_splits(manifest, SplitParams(folder_split=False)).frame
    plain = plan_splits(manifest.drop(columns="folder_split"), SplitParams()).frame
    assert off["split"].tolist() == plain["split"].tolist()
    assert set(off.loc[test_folder, "split"].astype(str)) == {"train", "val", "test"}


def test_a_group_follows_its_pinned_images_and_a_split_group_is_named():
    manifest = _shipped_split({"train": 60, "val": 10, "test": 10})
    first_test = manifest.index[manifest["folder_split"] == "test"][0]
    first_val = manifest.index[manifest["folder_split"] == "val"][0]
    near = manifest.index[manifest["folder_split"] == "train"][:3]
    manifest["dup_group"] = ""
    # two train/ images near-duplicates of a test/ image; one more of a val/ and a test/ image
    group = manifest.loc[first_test, "sha256"]
    manifest.loc[[near[0], near[1], first_test], "dup_group"] = group
    manifest.loc[[first_val, near[2]], "dup_group"] = manifest.loc[first_val, "sha256"]
    plan = plan_splits(manifest, SplitParams())
    split = plan.frame["split"].astype(str)
    assert split[near[0]] == split[near[1]] == "test" and split[near[2]] == "val"
    assert not any("straddle" in m for m in plan.messages)
    assert any("3 other image(s) went with a near-duplicate" in m for m in plan.messages)

    manifest.loc[first_val, "dup_group"] = group  # now one group in val/ and test/
    plan = plan_splits(manifest, SplitParams())
    assert plan.frame.loc[first_val, "split"] == "val"
    assert any(m.startswith("1 group(s)") and "straddle" in m for m in plan.messages)


# --- multi-label ------------------------------------------------------------------------

SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}


def _multi_manifest(n_keys: int, seed: int, n_labels: int = 20, start: int = 0) -> pd.DataFrame:
    """One image per key; label l on ~ 240·(l+1)^-0.9 of every 600 keys (power law), >= 30."""
    import numpy as np

    rng = np.random.default_rng(seed)
    hot = np.zeros((n_keys, n_labels), dtype=bool)
    for label in range(n_labels):
        n = max(30 * n_keys // 600, round(n_keys * 0.4 * (label + 1) ** -0.9))
        hot[rng.choice(n_keys, size=n, replace=False), label] = True
    rows = []
    for i in range(start, start + n_keys):
        sha = hashlib.sha256(f"ml{seed}:{i}".encode()).hexdigest()
        labels = " ".join(f"l{j:02d}" for j in np.flatnonzero(hot[i - start]))
        rows.append({"path": f"_images/{i}.png", "labels": labels, "sha256": sha})
    return pd.DataFrame(rows)


def _assert_stratified(split: pd.DataFrame, by: str = "split", shares: dict = SHARES) -> None:
    counts = split_counts(split) if by == "split" else fold_counts(split, len(shares))
    for label, row in counts.iterrows():
        n = row[list(shares)].sum()
        for name, share in shares.items():
            got = row[name] / n
            assert abs(got - share) <= max(0.05, 2 / n), (label, name, got, share, n)


def test_multi_label_splits_stratify_every_label():
    for seed in range(5):
        manifest = _multi_manifest(600, seed)
        assert split_counts(manifest.assign(split="train"))["total"].min() >= 30
        params = SplitParams(seed=seed)
        plan = plan_splits(manifest, params)
        assert plan.messages == []
        _assert_stratified(plan.frame)
        sizes = plan.frame["split"].value_counts(normalize=True)
        for name, share in SHARES.items():
            assert sizes[name] == pytest.approx(share, abs=0.03)
        assert (
            plan_splits(manifest, params).frame["split"].tolist() == plan.frame["split"].tolist()
        )  # deterministic
    counts = split_counts(plan.frame)
    assert list(counts.columns) == ["train", "val", "test", "total"]
    assert counts.index.name == "label" and len(counts) == 20


def test_multi_label_growth_keeps_the_previous_split_and_stays_stratified():
    params = SplitParams(folds=4, seed=1)
    a = _multi_manifest(400, seed=10)
    b = _multi_manifest(200, seed=11, start=400)
    first = plan_splits(a, params).frame
    grown = pd.concat([b, a], ignore_index=True).sample(frac=1, random_state=0)
    again = plan_splits(grown, params, previous=first).frame.set_index("path")
    before = first.set_index("path")
    assert again.loc[before.index, "split"].tolist() == before["split"].tolist()
    assert again.loc[before.index, "fold"].tolist() == before["fold"].tolist()
    _assert_stratified(again.reset_index())
    new = again.loc[again.index.difference(before.index)].reset_index()
    for label, row in split_counts(new).iterrows():  # B alone is stratified too, roughly
        for name, share in SHARES.items():
            n = row["total"]
            assert abs(row[name] / n - share) <= max(0.08, 3 / n), (label, name, row, n)
    # without the previous split, a regrown multi-label set would move old images
    fresh = plan_splits(grown, params).frame.set_index("path")
    assert (fresh.loc[before.index, "split"] != before["split"]).any()


def test_multi_label_groups_share_a_split_and_a_fold():
    manifest = _multi_manifest(600, seed=3)
    manifest["dup_group"] = ""
    for start in range(0, 600, 40):  # near-duplicate trios, each image with its own labels
        manifest.loc[start : start + 2, "dup_group"] = manifest.loc[start, "sha256"]
    manifest["subject"] = [f"s{i % 23}" if i % 7 == 0 else "" for i in range(600)]
    split = plan_splits(manifest, SplitParams(group_by="subject", folds=3)).frame
    duplicates = split[split["dup_group"] != ""]
    assert (duplicates.groupby("dup_group")[["split", "fold"]].nunique() == 1).all().all()
    subjects = split[split["subject"] != ""]
    assert (subjects.groupby("subject")[["split", "fold"]].nunique() == 1).all().all()
    assert split["split"].nunique() == 3
    with pytest.raises(SplitError, match="'site' is not a column"):
        plan_splits(manifest, SplitParams(group_by="site"))


def test_multi_label_folds_are_stratified():
    manifest = _multi_manifest(600, seed=4)
    split = plan_splits(manifest, SplitParams(folds=3, seed=4)).frame
    assert split["fold"].dtype == "int64"
    assert (split.loc[split["split"] == "test", "fold"] == -1).all()
    folded = split[split["split"] != "test"]
    assert set(folded["fold"]) == {0, 1, 2}
    table = fold_counts(split, 3)
    assert list(table.columns) == ["fold_0", "fold_1", "fold_2"] and len(table) == 20
    for label, row in table.iterrows():
        n = row.sum()
        assert (abs(row / n - 1 / 3) <= max(0.05, 2 / n)).all(), (label, row)


def test_a_rare_label_gets_one_clear_message_and_trains():
    manifest = _multi_manifest(120, seed=5, n_labels=4)
    manifest.loc[[3, 50], "labels"] = manifest.loc[[3, 50], "labels"].map(
        lambda s: " ".join(sorted([*s.split(), "rare"]))
    )
    plan = plan_splits(manifest, SplitParams())
    rare = plan.frame[plan.frame["labels"].str.split().map(lambda s: "rare" in s)]
    assert rare["split"].tolist() == ["train", "train"]
    said = [m for m in plan.messages if "rare" in m]
    assert said == [
        "label(s) ['rare'] have fewer images than the 3 splits (rare: 2): all their images are "
        "in train, so they are not validated or tested; add images"
    ]
    # empty sets are allowed and spread over the splits; one label on every image is not
    manifest.loc[:30, "labels"] = ""
    split = plan_splits(manifest, SplitParams()).frame
    assert set(split.loc[:30, "split"]) == {"train", "val", "test"}
    alone = manifest.assign(labels="cat")
    with pytest.raises(SplitError, match="every usable image has the one label 'cat'"):
        plan_splits(alone, SplitParams())
    with pytest.raises(SplitError, match="none of the 120 usable image"):
        plan_splits(manifest.assign(labels=""), SplitParams())


def test_multi_label_keeps_a_trees_val_and_test_folders():
    manifest = _multi_manifest(500, seed=6)
    manifest["folder_split"] = ["test" if i % 10 == 0 else "train" for i in range(500)]
    plan = plan_splits(manifest, SplitParams())
    split = plan.frame
    test_folder = split["folder_split"] == "test"
    assert (split.loc[test_folder, "split"] == "test").all()
    drawn = split.loc[~test_folder, "split"].astype(str).value_counts()
    assert set(drawn.index) == {"train", "val"}
    assert drawn["val"] / drawn.sum() == pytest.approx(0.15 / 0.85, abs=0.03)
    assert any("50 test image(s) from its folders" in m for m in plan.messages)


def test_the_split_flow_reuses_a_matching_multi_label_split_only(tmp_path, prefect_server):
    from flows.split import LEDGER, split_flow

    clean = tmp_path / "artifacts" / "clean"
    clean.mkdir(parents=True)
    out = tmp_path / "artifacts" / "split"

    _manifest(40).to_parquet(clean / "manifest.parquet")  # single-label: no ledger
    split_flow(SplitParams(), str(tmp_path))
    assert sorted(p.name for p in out.iterdir()) == [
        "counts.csv",
        "split.parquet",
        "test.csv",
        "train.csv",
        "val.csv",
    ]

    a, b = _multi_manifest(300, seed=7), _multi_manifest(150, seed=8, start=300)
    a.to_parquet(clean / "manifest.parquet")
    sizes = split_flow(SplitParams(folds=2), str(tmp_path))
    assert sum(sizes.values()) == 300
    ledger = json.loads((out / LEDGER).read_text())
    assert ledger["task"] == "multi_label" and ledger["split_params"]["folds"] == 2
    first = pd.read_parquet(out / "split.parquet").set_index("path")
    assert list(pd.read_csv(out / "train.csv").columns) == ["path", "labels", "fold"]
    assert pd.read_csv(out / "counts.csv")["label"].tolist() == [f"l{j:02d}" for j in range(20)]

    pd.concat([a, b]).to_parquet(clean / "manifest.parquet")
    split_flow(SplitParams(folds=2), str(tmp_path))
    grown = pd.read_parquet(out / "split.parquet").set_index("path")
    assert grown.loc[first.index, "split"].tolist() == first["split"].tolist()
    assert grown.loc[first.index, "fold"].tolist() == first["fold"].tolist()

    # another seed: the ledger does not match, every image is drawn anew
    from flows.split import previous_split

    previous, note = previous_split(out, SplitParams(folds=2, seed=5))
    assert previous is None and "seed 0 → 5" in note
    split_flow(SplitParams(folds=2, seed=5), str(tmp_path))
    redrawn = pd.read_parquet(out / "split.parquet").set_index("path")
    assert (redrawn.loc[grown.index, "split"] != grown["split"]).any()
    assert json.loads((out / LEDGER).read_text())["split_params"]["seed"] == 5


def test_dvc_keeps_the_split_folder_for_the_flow_to_read():
    import yaml

    from tests.conftest import REPO

    outs = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["split"]["outs"]
    assert outs == [{"artifacts/split": {"persist": True}}]
