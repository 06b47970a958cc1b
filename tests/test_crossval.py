"""k-fold cross-validation on a split with a `fold` column, label issues, the LR finder."""

import numpy as np
import pandas as pd
import pytest

from params import CrossvalParams, TrainParams
from tasks.crossval import CrossvalError, find_label_issues, fold_pool, mean_std, run_crossval
from tasks.lr_find import lr_range_test, suggest
from tasks.train import TrainData
from tests.training import tiny_train_data

TINY = dict(epochs=1, freeze_epochs=0, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    return tiny_train_data(tmp_path_factory.mktemp("cv"), per_class=8)


def with_folds(data: TrainData, k: int) -> TrainData:
    split = data.split.copy()
    pool = split["split"].isin(["train", "val"])
    split["fold"] = -1
    split.loc[pool, "fold"] = np.arange(pool.sum()) % k
    return TrainData(**{**data.__dict__, "split": split})


def test_a_split_without_folds_is_a_clear_error(data):
    with pytest.raises(CrossvalError, match=r"set `folds: 5`.*params/split\.yaml"):
        fold_pool(data.split)


def test_crossval_trains_one_model_per_fold(data, tmp_path):
    folded = with_folds(data, 2)
    cv = run_crossval(
        TrainParams(**TINY), CrossvalParams(label_issues=5), folded, tmp_path, show_progress=False
    )
    pool = fold_pool(folded.split)
    assert [f.fold for f in cv.folds] == [0, 1]
    for f in cv.folds:
        held = pool["fold"] == f.fold
        assert (f.n_train, f.n_val) == ((~held).sum(), held.sum())
        assert (tmp_path / f"fold{f.fold}" / "model.pt").is_file()
    # every train+val image has exactly one out-of-fold prediction, from the fold holding it out
    assert sorted(cv.oof["path"]) == sorted(pool["path"])
    prob_cols = [c for c in cv.oof.columns if c.startswith("p_")]
    assert np.allclose(cv.oof[prob_cols].sum(1), 1, atol=1e-3)
    accs = [f.metrics["accuracy"] for f in cv.folds]
    assert cv.summary["accuracy_mean"] == pytest.approx(np.mean(accs))
    assert cv.summary["accuracy_std"] == pytest.approx(np.std(accs, ddof=1))
    ens = cv.ensemble
    assert ens["models"] == 2 and sorted(ens["folds"]) == [0, 1]
    assert ens["accuracy_gain"] == pytest.approx(
        ens["test_accuracy_ensemble"] - ens["test_accuracy_single_mean"]
    )
    assert len(cv.label_issues) <= 5
    assert set(cv.label_issues.columns) >= {"path", "label", "suggested", "p_label"}


def test_label_issues_rank_confidently_disputed_labels_first():
    classes = ["cat", "dog"]
    pool = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(8)],
            "sha256": [f"sha{i}" for i in range(8)],
            "label": ["cat"] * 4 + ["dog"] * 4,
            "fold": [0, 1] * 4,
        }
    )
    probs = np.array([[0.9, 0.1]] * 4 + [[0.1, 0.9]] * 4)
    probs[2] = [0.02, 0.98]  # labelled cat, the held-out model is sure it is a dog
    probs[6] = [0.7, 0.3]  # labelled dog, leaning cat
    issues = find_label_issues(pool, probs, classes, limit=10)
    assert issues["path"].tolist()[0] == "2.png"
    assert issues.iloc[0]["suggested"] == "dog" and issues.iloc[0]["p_label"] == pytest.approx(0.02)
    assert "0.png" not in issues["path"].tolist()


def test_mean_std():
    out = mean_std([{"accuracy": 0.5}, {"accuracy": 0.7}])
    assert out["accuracy_mean"] == pytest.approx(0.6)
    assert out["accuracy_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_lr_finder_sweeps_geometrically_and_suggests(data):
    params = TrainParams(**{**TINY, "freeze_epochs": 1})
    result = lr_range_test(params, data, start_lr=1e-5, end_lr=1.0, steps=15)
    lrs = result.curve["lr"].to_numpy()
    ratios = lrs[1:] / lrs[:-1]
    assert np.allclose(ratios, ratios[0]) and lrs[0] == pytest.approx(1e-5)
    assert lrs.min() <= result.suggestion <= lrs.max()


def test_lr_suggestion_on_a_known_curve():
    lr = np.logspace(-6, 0, 60)
    # flat, then falls fastest around 1e-3, bottoms out at 1e-2, then explodes
    smoothed = 2 - np.tanh((np.log10(lr) + 3) * 2) + np.where(lr > 1e-2, (np.log10(lr) + 2) * 5, 0)
    curve = pd.DataFrame({"step": range(60), "lr": lr, "loss": smoothed, "smoothed": smoothed})
    got = suggest(curve)
    assert 5e-4 < got["steepest"] < 2e-3
    assert 5e-4 < got["min_over_10"] < 2e-3
