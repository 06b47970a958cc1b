import hashlib

import pandas as pd
import pytest

from params import SplitParams
from tasks.split import SplitError, assign_splits, split_counts


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
    first, second = assign_splits(manifest, params), assign_splits(manifest, params)
    assert first["split"].tolist() == second["split"].tolist()
    counts = split_counts(first)
    for label in "abc":
        assert counts.loc[label, "train"] / 400 == pytest.approx(0.7, abs=0.07)
        assert counts.loc[label, "test"] / 400 == pytest.approx(0.15, abs=0.05)


def test_adding_images_never_moves_old_ones():
    params = SplitParams()
    before = assign_splits(_manifest(50), params).set_index("path")["split"]
    grown = pd.concat([_manifest(50), _manifest(30, start=50)], ignore_index=True)
    after = assign_splits(grown.sample(frac=1, random_state=1), params).set_index("path")["split"]
    assert after.loc[before.index].tolist() == before.tolist()


def test_seed_changes_the_assignment():
    manifest = _manifest(100)
    a = assign_splits(manifest, SplitParams(seed=0))["split"]
    b = assign_splits(manifest, SplitParams(seed=1))["split"]
    assert (a != b).any()


def test_a_class_without_training_images_fails_clearly():
    manifest = pd.concat([_manifest(30, classes=("a",)), _manifest(1, classes=("rare",))])
    params = SplitParams(train=0.01, val=0.01, test=0.98)
    with pytest.raises(SplitError, match=r"no training image"):
        assign_splits(manifest, params)
    with pytest.raises(SplitError, match="empty"):
        assign_splits(manifest.iloc[0:0], SplitParams())
