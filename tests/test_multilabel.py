"""Multi-label arrays: label sets, thresholds, metrics and weights against scikit-learn."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    hamming_loss,
    label_ranking_average_precision_score,
    log_loss,
)

from tasks.multilabel import (
    GLOBAL_GRID,
    decide,
    fit_thresholds,
    join_set,
    label_classes,
    label_counts,
    lrap_per_image,
    multi_hot,
    multilabel_metrics,
    pos_weights,
    pr_curves,
    rarest_label_weights,
    split_set,
    stratified_assignment,
)


def _fixed(seed: int = 0, n: int = 80, labels: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    targets = (rng.random((n, labels)) < 0.3).astype(np.float32)
    targets[0] = 0  # an image without labels
    probs = np.clip(0.6 * targets + 0.5 * rng.random((n, labels)), 0, 1).astype(np.float32)
    return probs, targets


def test_label_sets_round_trip_through_multi_hot():
    assert join_set(["b", "a", "b"]) == "a b"
    assert join_set([]) == "" and split_set("") == [] and split_set("a b") == ["a", "b"]
    sets = ["cat dog", "", "dog", "bird cat", "cat unknown"]
    classes = label_classes(sets)
    assert classes == ["bird", "cat", "dog", "unknown"]
    hot = multi_hot(sets, classes)
    assert hot.dtype == np.float32 and hot.shape == (5, 4)
    back = [join_set(c for c, on in zip(classes, row, strict=True) if on) for row in hot]
    assert back == sets
    dropped = multi_hot(sets, ["cat", "dog"])  # a label not in classes is dropped
    assert dropped.tolist() == [[1, 1], [0, 0], [0, 1], [1, 0], [1, 0]]

    frame = pd.DataFrame({"labels": sets, "split": ["train", "train", "val", "test", "val"]})
    counts = label_counts(frame, "split", ["train", "val", "test"])
    assert list(counts.columns) == ["train", "val", "test"]
    assert counts.loc["cat"].tolist() == [1, 1, 1]
    assert counts.loc["dog"].tolist() == [1, 1, 0]
    assert counts.loc["bird"].tolist() == [0, 0, 1]


def test_thresholds_find_each_labels_best_f1_cut_and_rare_labels_get_the_global_one():
    rng = np.random.default_rng(7)
    n = 200
    targets = np.zeros((n, 3), dtype=np.float32)
    probs = np.zeros((n, 3), dtype=np.float32)
    # label 0: positives above 0.62, negatives below: the best cut is the lowest positive
    targets[:60, 0] = 1
    probs[:, 0] = np.where(targets[:, 0] == 1, rng.uniform(0.62, 1, n), rng.uniform(0, 0.6, n))
    # label 1: separable at a low cut (positives in [0.2, 0.5], negatives below 0.15)
    targets[100:150, 1] = 1
    probs[:, 1] = np.where(targets[:, 1] == 1, rng.uniform(0.2, 0.5, n), rng.uniform(0, 0.15, n))
    # label 2: only 3 positives (< min_positives = 5): takes the global threshold
    targets[[10, 110, 190], 2] = 1
    probs[:, 2] = np.where(targets[:, 2] == 1, 0.9, rng.uniform(0, 0.3, n))
    probs = probs.astype(np.float32)

    thresholds, global_t = fit_thresholds(probs, targets, min_positives=5)
    assert thresholds.dtype == np.float64 and thresholds.shape == (3,)
    assert ((thresholds >= 0) & (thresholds <= 1)).all()
    assert thresholds[0] == pytest.approx(probs[:60, 0].min())
    assert thresholds[1] == pytest.approx(probs[100:150, 1].min())
    # decide() with the fitted thresholds reproduces the perfect F1 of both cuts (>=, not >)
    pred = decide(probs, thresholds)
    assert f1_score(targets[:, 0], pred[:, 0]) == 1.0
    assert f1_score(targets[:, 1], pred[:, 1]) == 1.0

    # the global threshold: the grid point with the best micro-F1 over all labels
    micro = [f1_score(targets, probs >= t, average="micro") for t in GLOBAL_GRID]
    best = GLOBAL_GRID[np.flatnonzero(np.isclose(micro, max(micro)))[-1]]
    assert global_t == pytest.approx(best) and thresholds[2] == global_t
    assert isinstance(global_t, float) and round(global_t, 2) == global_t

    # on overlapping scores the fitted cut still gives the best F1 any cut of that label gives
    noisy_probs, noisy_targets = _fixed(3, n=150, labels=4)
    fitted, _ = fit_thresholds(noisy_probs, noisy_targets, min_positives=5)
    for j in range(4):
        candidates = np.unique(noisy_probs[:, j])
        best_any = max(f1_score(noisy_targets[:, j], noisy_probs[:, j] >= t) for t in candidates)
        reached = f1_score(noisy_targets[:, j], decide(noisy_probs, fitted)[:, j])
        assert reached == pytest.approx(best_any, abs=1e-12)
        # ties go to the higher threshold: no higher cut reaches the same F1
        higher = candidates[candidates > fitted[j]]
        assert all(f1_score(noisy_targets[:, j], noisy_probs[:, j] >= t) < reached for t in higher)


def test_decide_takes_per_label_thresholds_or_one_override():
    probs = np.array([[0.2, 0.5, 0.9], [0.6, 0.49, 0.1]])
    assert decide(probs, [0.2, 0.5, 0.95]).tolist() == [[True, True, False], [True, False, False]]
    assert decide(probs, 0.5).tolist() == [[False, True, True], [True, False, False]]
    assert decide(probs, 0.1).all() and not decide(probs, 0.91).any()


def test_metrics_agree_with_scikit_learn():
    probs, targets = _fixed(1)
    targets[:, 4] = 0  # a label without positives: no AP, left out of the macro mean
    thresholds = np.array([0.5, 0.4, 0.6, 0.5, 0.5])
    metrics, per_label = multilabel_metrics(probs, targets, thresholds, list("abcde"))
    pred = probs >= thresholds
    assert metrics["map_macro"] == pytest.approx(
        average_precision_score(targets[:, :4], probs[:, :4], average="macro")
    )
    assert metrics["map_micro"] == pytest.approx(
        average_precision_score(targets, probs, average="micro")
    )
    for avg in ("micro", "macro", "samples"):
        assert metrics[f"f1_{avg}"] == pytest.approx(
            f1_score(targets, pred, average=avg, zero_division=0)
        )
    tp = (pred & (targets == 1)).sum()
    assert metrics["precision_micro"] == pytest.approx(tp / pred.sum())
    assert metrics["recall_micro"] == pytest.approx(tp / targets.sum())
    assert metrics["subset_accuracy"] == pytest.approx(
        np.mean((pred == (targets == 1)).all(axis=1))
    )
    assert metrics["hamming_loss"] == pytest.approx(hamming_loss(targets, pred))
    assert metrics["label_accuracy"] == pytest.approx(np.mean(pred == (targets == 1)))
    p = np.clip(probs.astype(float), 1e-7, 1 - 1e-7)  # label e has p = 1 on negatives
    bce = -np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p))
    assert metrics["log_loss"] == pytest.approx(bce, rel=1e-9)
    assert metrics["log_loss"] == pytest.approx(log_loss(targets.ravel(), p.ravel()))
    assert 0 <= metrics["ece"] <= 1
    assert metrics["n_images"] == 80 and metrics["n_labels"] == 5
    assert metrics["labels_per_image"] == pytest.approx(targets.sum(1).mean())

    assert list(per_label.columns) == [
        "class",
        "ap",
        "precision",
        "recall",
        "f1",
        "support",
        "threshold",
    ]
    assert np.isnan(per_label.loc[4, "ap"]) and per_label.loc[4, "support"] == 0
    assert per_label.loc[0, "ap"] == pytest.approx(
        average_precision_score(targets[:, 0], probs[:, 0])
    )
    assert per_label["f1"].tolist() == pytest.approx(
        f1_score(targets, pred, average=None, zero_division=0).tolist()
    )
    assert per_label["threshold"].tolist() == thresholds.tolist()
    # a scalar threshold broadcasts into the table
    _, flat = multilabel_metrics(probs, targets, 0.5, list("abcde"))
    assert flat["threshold"].tolist() == [0.5] * 5


def test_pooled_calibration_error_by_hand():
    # two cells in the 0.2 bin (both negative), two in the 0.8 bin (one positive)
    probs = np.array([[0.2, 0.8], [0.2, 0.8]])
    targets = np.array([[0, 1], [0, 0]])
    metrics, _ = multilabel_metrics(probs, targets, 0.5, ["a", "b"])
    assert metrics["ece"] == pytest.approx(0.5 * 0.2 + 0.5 * abs(0.5 - 0.8))


def test_lrap_per_image_is_scikit_learns_per_image_term():
    probs, targets = _fixed(2)
    targets[1] = 1  # every label true: 1.0, as in scikit-learn
    probs[2, :] = 0.5  # ties
    per_image = lrap_per_image(probs, targets)
    assert per_image.dtype == np.float32 and per_image.shape == (80,)
    assert per_image[0] == 1.0 and per_image[1] == 1.0  # no label / all labels
    assert per_image.mean() == pytest.approx(
        label_ranking_average_precision_score(targets, probs), rel=1e-6
    )
    # by hand: true labels ranked 1st and 3rd → (1/1 + 2/3) / 2
    assert lrap_per_image(np.array([[0.9, 0.5, 0.4, 0.1]]), np.array([[1, 0, 1, 0]]))[
        0
    ] == pytest.approx((1 + 2 / 3) / 2)


def test_pos_weights():
    Y = np.array([[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1], [1, 0, 1, 1]] + [[0, 0, 1, 1]] * 96)
    weights = pos_weights(Y)
    # 2 positives; none (1.0); 97 positives; every image positive (no negative: 0)
    assert weights.tolist() == pytest.approx([98 / 2, 1.0, 3 / 97, 0.0])
    sparse = np.zeros((300, 1))
    sparse[0] = 1
    assert pos_weights(sparse).tolist() == [100.0]  # 299 clipped to 100


def test_rarest_label_weights():
    Y = np.array([[1, 0, 0], [1, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    # label weights: n / (L * n_pos) = 6 / (3 * 5), 6 / (3 * 2); label 2 has no positive
    w_a, w_b = 6 / 15, 6 / 6
    assert rarest_label_weights(Y).tolist() == pytest.approx([w_a, w_a, w_b, w_a, w_a, w_b])
    assert rarest_label_weights(np.zeros((3, 2))).tolist() == [1.0, 1.0, 1.0]


def test_stratified_assignment_is_deterministic_and_respects_zero_shares():
    rng = np.random.default_rng(0)
    Y = rng.random((300, 6)) < np.array([0.5, 0.3, 0.2, 0.1, 0.05, 0.0])
    Y[:20] = False  # empty sets
    a = stratified_assignment(Y, [0.7, 0.0, 0.3], seed=4)
    assert a.dtype == np.int64 and set(a.tolist()) == {0, 2}
    assert (a == stratified_assignment(Y, [0.7, 0.0, 0.3], seed=4)).all()
    for j in range(5):
        assert (a[Y[:, j]] == 2).mean() == pytest.approx(0.3, abs=0.06)
    empty = ~Y.any(axis=1)  # empty sets are spread by share too
    assert (a[empty] == 2).mean() == pytest.approx(0.3, abs=0.03)
    assert (stratified_assignment(Y, [1.0, 0.0], seed=0) == 0).all()
    assert len(stratified_assignment(Y[:0], [0.5, 0.5], seed=0)) == 0


def test_pr_curves_long_format_capped_per_label():
    rng = np.random.default_rng(5)
    targets = (rng.random((1000, 3)) < 0.4).astype(int)
    targets[:, 2] = 0
    probs = rng.random((1000, 3))
    curves = pr_curves(probs, targets, ["a", "b", "c"])
    assert list(curves.columns) == ["label", "recall", "precision", "threshold"]
    assert set(curves["label"]) == {"a", "b"}  # c has no positive
    for _, curve in curves.groupby("label"):
        assert len(curve) <= 200
        assert np.isnan(curve["threshold"].iloc[-1]) and curve["recall"].iloc[-1] == 0
        assert curve["threshold"].iloc[:-1].notna().all()
    small = pr_curves(probs[:10], targets[:10], ["a", "b", "c"])
    assert len(small[small["label"] == "a"]) <= 11
