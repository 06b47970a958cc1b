"""Multi-label data as arrays: label sets, stratified assignment, weights, thresholds, metrics.

A label set is stored as one canonical string: its labels sorted, unique and
space-joined ("" is the empty set); labels are safe names (tasks/sources.safe_label),
which hold no space. Everything here is plain numpy, scikit-learn and
iterative-stratification code on (images, labels) arrays; the stages decide what to
do with the results.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import IterativeStratification
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    log_loss,
    precision_recall_curve,
    precision_score,
    recall_score,
)

GLOBAL_GRID = np.round(np.arange(0.05, 0.951, 0.05), 2)  # the global threshold's candidates
MAX_POS_WEIGHT = 100.0
EPS = 1e-7  # log_loss clips probabilities to [EPS, 1 - EPS]: float32 sigmoids saturate at 1
CURVE_POINTS = 200  # at most this many points per label in pr_curves


# --- label sets -------------------------------------------------------------------------


def split_set(cell: str) -> list[str]:
    """The labels of a canonical set string ("" or a missing cell: none)."""
    if not isinstance(cell, str):
        return []
    return cell.split()


def join_set(labels: Iterable[str]) -> str:
    """The canonical string of a label set: sorted, unique, space-joined; empty: ""."""
    return " ".join(sorted({str(label) for label in labels}))


def label_classes(sets: Sequence[str]) -> list[str]:
    """Every label that occurs in `sets`, sorted."""
    return sorted({label for cell in sets for label in split_set(cell)})


def multi_hot(sets: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    """(N, L) float32, 1 where image n has label classes[l]; labels not in classes are dropped."""
    index = {c: i for i, c in enumerate(classes)}
    out = np.zeros((len(sets), len(classes)), dtype=np.float32)
    for row, cell in enumerate(sets):
        for label in split_set(cell):
            column = index.get(label)
            if column is not None:
                out[row, column] = 1.0
    return out


def label_counts(frame: pd.DataFrame, by: str, order: Sequence) -> pd.DataFrame:
    """Images having each label (rows, sorted) per value of `by` (columns, in `order`)."""
    classes = label_classes(frame["labels"].tolist())
    hot = multi_hot(frame["labels"].tolist(), classes).astype(np.int64)
    codes = pd.Categorical(frame[by], categories=list(order)).codes
    table = np.zeros((len(classes), len(order)), dtype=np.int64)
    for j in range(len(order)):
        table[:, j] = hot[codes == j].sum(axis=0)
    counts = pd.DataFrame(table, index=pd.Index(classes, name="label"), columns=list(order))
    counts.columns.name = by
    return counts


# --- assignment -------------------------------------------------------------------------


def stratified_assignment(Y: np.ndarray, shares: Sequence[float], seed: int) -> np.ndarray:
    """Each row's subset (an index into `shares`) by iterative stratification.

    Sechidis et al. (2011), as iterative-stratification implements it: the rarest label's
    rows are placed first, each into the subset that still wants most of that label. A
    subset whose share is 0 gets nothing; rows with an empty set are stratified as if the
    empty set were one more label, so they too are spread by share. The same rows in the
    same order and the same seed give the same result.
    """
    Y = np.asarray(Y, dtype=bool)
    if Y.ndim == 1:
        Y = Y[:, None]
    share = np.asarray(shares, dtype=float)
    out = np.zeros(len(Y), dtype=np.int64)
    active = np.flatnonzero(share > 0)
    if len(Y) == 0 or len(active) == 0:
        return out
    if len(active) == 1:
        out[:] = active[0]
        return out
    r = share[active] / share[active].sum()
    empty = ~Y.any(axis=1)
    if empty.any():  # the empty set stratified like one more label
        Y = np.column_stack([Y, empty])
    folds = IterativeStratification(labels=Y, r=r, random_state=np.random.RandomState(seed))
    return active[np.asarray(folds, dtype=np.int64)]


# --- weights ----------------------------------------------------------------------------


def pos_weights(Y: np.ndarray) -> np.ndarray:
    """(L,) BCE `pos_weight`: negatives / positives per label, at most 100; 1.0 without
    positives."""
    Y = np.asarray(Y, dtype=bool)
    n_pos = Y.sum(axis=0).astype(float)
    n_neg = len(Y) - n_pos
    ratio = np.divide(n_neg, n_pos, out=np.ones_like(n_pos), where=n_pos > 0)
    return np.minimum(ratio, MAX_POS_WEIGHT)


def rarest_label_weights(Y: np.ndarray) -> np.ndarray:
    """(N,) sampling weight per image: the "balanced" weight of its rarest label.

    A label's weight is n_images / (n_labels * its positives), as scikit-learn's
    `class_weight="balanced"`; an image takes the largest weight among its labels. An image
    with an empty set takes the smallest label weight: it is drawn like the images of the
    most common label, never more often than a labelled image. With no positive at all,
    every image weighs 1.
    """
    Y = np.asarray(Y, dtype=bool)
    n, n_labels = Y.shape
    n_pos = Y.sum(axis=0)
    if n == 0 or not n_pos.any():
        return np.ones(n, dtype=float)
    weight = np.zeros(n_labels, dtype=float)
    weight[n_pos > 0] = n / (n_labels * n_pos[n_pos > 0])
    per_image = np.where(Y, weight, -np.inf).max(axis=1)
    return np.where(Y.any(axis=1), per_image, weight[n_pos > 0].min())


# --- decisions --------------------------------------------------------------------------


def decide(probs: np.ndarray, thresholds: np.ndarray | Sequence[float] | float) -> np.ndarray:
    """(N, L) bool: each label whose probability reaches its threshold (a scalar: all)."""
    return np.asarray(probs) >= np.asarray(thresholds, dtype=float)


def _best_f1_threshold(scores: np.ndarray, truth: np.ndarray) -> float:
    """The threshold t (one of the scores) whose `scores >= t` has the best F1; ties: the
    higher t."""
    precision, recall, thresholds = precision_recall_curve(truth, scores)
    p, r = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = np.flatnonzero(f1 == f1.max())[-1]  # thresholds increase: the last is the highest
    return float(thresholds[best])


def fit_thresholds(
    probs: np.ndarray, targets: np.ndarray, min_positives: int = 5, prior: float = 0.0
) -> tuple[np.ndarray, float]:
    """(per-label thresholds (L,), the global threshold), chosen on validation probabilities.

    Each label gets the threshold with the best F1 on its own column (a value of its
    probabilities, so `decide` reproduces that F1 exactly; ties go to the higher threshold).
    A label with fewer than `min_positives` positives gets the global threshold instead: the
    t of 0.05, 0.10, … 0.95 with the best micro-F1 over all labels (ties: the higher t).
    With `prior` > 0 a label's own cut is pulled towards the global one, weighted by its
    positives: (n·own + prior·global) / (n + prior), so a cut fitted to a handful of
    validation images does not overfit them.
    """
    probs = np.asarray(probs)
    truth = np.asarray(targets) > 0.5
    f1s = [f1_score(truth, decide(probs, t), average="micro", zero_division=0) for t in GLOBAL_GRID]
    f1s_arr = np.asarray(f1s)
    global_t = float(GLOBAL_GRID[np.flatnonzero(f1s_arr == f1s_arr.max())[-1]])
    thresholds = np.full(probs.shape[1], global_t, dtype=float)
    positives = truth.sum(axis=0)
    for j in range(probs.shape[1]):
        if positives[j] >= max(min_positives, 1):
            own = _best_f1_threshold(probs[:, j], truth[:, j])
            n = positives[j]
            thresholds[j] = (n * own + prior * global_t) / (n + prior)
    return np.clip(thresholds, 0.0, 1.0), global_t


# --- metrics ----------------------------------------------------------------------------


def lrap_per_image(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N,) float32 label ranking average precision of each image, scikit-learn's definition
    (`label_ranking_average_precision_score` is their mean): 1.0 where an image has no
    positive label, or only positive ones."""
    scores = -np.asarray(probs, dtype=float)
    truth = np.asarray(targets) > 0.5
    n_true = truth.sum(axis=1)
    # rank of each label among all labels, and among the true labels only (ties: the max)
    rank_all = _rank_max(scores)
    rank_true = _rank_max(np.where(truth, scores, np.inf))
    ratio = np.where(truth, rank_true / rank_all, 0.0).sum(axis=1)
    out = np.divide(ratio, n_true, out=np.ones(len(truth)), where=n_true > 0)
    out[(n_true == 0) | (n_true == truth.shape[1])] = 1.0
    return out.astype(np.float32)


def _rank_max(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values, method="max", axis=1)


def calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """Gap between probability and how often it is right, averaged over equal-width bins, for
    any (probability, outcome) pairs: top-1 confidences, or every (image, label) cell."""
    p = np.asarray(confidence, dtype=float).ravel()
    y = np.asarray(correct, dtype=float).ravel()
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(y[mask].mean() - p[mask].mean())
    return float(ece)


def _samples_f1(truth: np.ndarray, pred: np.ndarray) -> float:
    """F1 per image, averaged (sklearn's `average="samples"`, zero_division=0), also for a
    single label column, which sklearn takes for binary data and refuses."""
    both = (truth & pred).sum(1)
    sizes = truth.sum(1) + pred.sum(1)
    per_image = np.divide(2 * both, sizes, out=np.zeros(len(truth)), where=sizes > 0)
    return float(per_image.mean()) if len(truth) else 0.0


def multilabel_metrics(
    probs: np.ndarray,
    targets: np.ndarray,
    thresholds: np.ndarray | Sequence[float] | float,
    labels: Sequence[str],
) -> tuple[dict[str, float], pd.DataFrame]:
    """(metrics, per-label table) of probabilities (N, L) against multi-hot targets.

    mAP (macro) averages the labels with at least one positive; set metrics (F1, subset
    accuracy, Hamming) use `decide(probs, thresholds)`. `log_loss` is the mean binary
    cross-entropy of every (image, label) cell, probabilities clipped to [1e-7, 1 - 1e-7].
    """
    probs = np.asarray(probs, dtype=float)
    truth = (np.asarray(targets) > 0.5).astype(np.int64)
    pred = decide(probs, thresholds).astype(np.int64)
    has_pos = truth.sum(axis=0) > 0
    nan = float("nan")
    ap = np.full(truth.shape[1], nan)
    for j in np.flatnonzero(has_pos):
        ap[j] = average_precision_score(truth[:, j], probs[:, j])
    hamming = float(hamming_loss(truth, pred))
    metrics: dict[str, float] = {
        "map_macro": float(ap[has_pos].mean()) if has_pos.any() else nan,
        "map_micro": (
            float(average_precision_score(truth, probs, average="micro")) if has_pos.any() else nan
        ),
        "f1_micro": float(f1_score(truth, pred, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(truth, pred, average="macro", zero_division=0)),
        "f1_samples": _samples_f1(truth, pred),
        "precision_micro": float(precision_score(truth, pred, average="micro", zero_division=0)),
        "recall_micro": float(recall_score(truth, pred, average="micro", zero_division=0)),
        "subset_accuracy": float(accuracy_score(truth, pred)),
        "hamming_loss": hamming,
        "label_accuracy": 1.0 - hamming,
        "log_loss": float(
            log_loss(truth.ravel(), np.clip(probs, EPS, 1 - EPS).ravel(), labels=[0, 1])
        ),
        "ece": calibration_error(probs, truth),
        "n_images": len(truth),
        "n_labels": truth.shape[1],
        "labels_per_image": float(truth.sum(axis=1).mean()) if len(truth) else 0.0,
    }
    # per column from the counts (sklearn takes a single column for binary data)
    tp = (truth & pred).sum(0).astype(float)
    support = truth.sum(0)
    p = np.divide(tp, pred.sum(0), out=np.zeros_like(tp), where=pred.sum(0) > 0)
    r = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f = np.divide(2 * p * r, p + r, out=np.zeros_like(tp), where=(p + r) > 0)
    per_label = pd.DataFrame(
        {
            "class": list(labels),
            "ap": ap,
            "precision": p,
            "recall": r,
            "f1": f,
            "support": support,
            "threshold": np.broadcast_to(
                np.asarray(thresholds, dtype=float), (truth.shape[1],)
            ).copy(),
        }
    )
    return metrics, per_label


def pr_curves(probs: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> pd.DataFrame:
    """Each label's precision-recall curve in long format (label, recall, precision,
    threshold), at most CURVE_POINTS points per label kept evenly (the ends included);
    the end point scikit-learn adds (recall 0, precision 1) has no threshold (NaN). Labels
    without a positive are left out."""
    probs = np.asarray(probs, dtype=float)
    truth = np.asarray(targets) > 0.5
    parts = []
    for j, label in enumerate(labels):
        if not truth[:, j].any():
            continue
        precision, recall, thresholds = precision_recall_curve(truth[:, j], probs[:, j])
        threshold = np.append(thresholds.astype(float), np.nan)
        keep = np.unique(np.linspace(0, len(recall) - 1, CURVE_POINTS).round().astype(int))
        parts.append(
            pd.DataFrame(
                {
                    "label": label,
                    "recall": recall[keep],
                    "precision": precision[keep],
                    "threshold": threshold[keep],
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=["label", "recall", "precision", "threshold"])
    return pd.concat(parts, ignore_index=True)
