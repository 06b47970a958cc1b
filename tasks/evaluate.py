"""Test-split metrics with scikit-learn: accuracy, top-k, P/R/F1, ROC-AUC, log loss, calibration;
for multi-label data mAP, F1 (micro, macro, samples), subset accuracy and Hamming loss.

Figures (confusion matrices, reliability diagram, precision-recall curves, misclassified
gallery) are in tasks/figures.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
    top_k_accuracy_score,
)

from tasks import multilabel


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_class: pd.DataFrame
    confusion: np.ndarray  # counts, rows = actual, columns = predicted
    confusion_normalized: np.ndarray  # each row divided by its count (recall on the diagonal)
    predictions: pd.DataFrame  # predictions.csv: per image (multi-label: per image and label)
    per_image: pd.DataFrame | None = None  # path, actual, predicted, confidence, loss: the gallery
    calibration: tuple[np.ndarray, np.ndarray] | None = None  # (probability, right) pairs
    curves: pd.DataFrame | None = None  # precision-recall per class: label, recall, precision…
    ap: pd.DataFrame | None = None  # class, ap: each class's average precision (one-vs-rest)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins."""
    return multilabel.calibration_error(probs.max(1), probs.argmax(1) == targets, bins)


def roc_auc(
    probs: np.ndarray, targets: np.ndarray, labels: np.ndarray
) -> tuple[float | None, list]:
    """(macro one-vs-rest ROC-AUC, per-class AUCs); None where a class lacks positives/negatives."""
    per_class: list[float | None] = []
    for c in labels:
        positive = targets == c
        per_class.append(
            float(roc_auc_score(positive, probs[:, c]))
            if 0 < positive.sum() < len(targets)
            else None
        )
    if len(labels) == 2:
        overall = per_class[1]
    elif all(a is not None for a in per_class):
        overall = float(roc_auc_score(targets, probs, multi_class="ovr", labels=labels))
    else:
        overall = None
    return overall, per_class


def evaluate_predictions(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    paths: list[str],
    top_k: int,
    calibration_bins: int = 10,
) -> Evaluation:
    labels = np.arange(len(classes))
    probs = probs / probs.sum(1, keepdims=True)
    preds = probs.argmax(1)
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(targets, preds)),
        "n_test": len(targets),
        "n_classes": len(classes),
        "chance_accuracy": float(np.bincount(targets, minlength=len(classes)).max() / len(targets)),
    }
    # averages over the classes in the test split or predicted (scikit-learn's own choice):
    # a class with no test image and no prediction would count as a 0 in every macro mean
    seen = np.union1d(targets, preds)
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            targets, preds, labels=seen, average=avg, zero_division=0
        )
        metrics |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
    k = min(top_k, len(classes) - 1)
    if k >= 2:
        metrics[f"top{k}_accuracy"] = float(
            top_k_accuracy_score(targets, probs, k=k, labels=labels)
        )
    auc, auc_per_class = roc_auc(probs, targets, labels)
    if auc is not None:
        metrics["roc_auc_ovr"] = auc
    metrics["log_loss"] = float(log_loss(targets, probs, labels=labels))
    metrics["ece"] = expected_calibration_error(probs, targets, calibration_bins)
    p, r, f, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0
    )
    per_class = pd.DataFrame(
        {
            "class": classes,
            "precision": p,
            "recall": r,
            "f1": f,
            "roc_auc": auc_per_class,
            "support": support,
        }
    ).round(4)
    p_true = probs[np.arange(len(targets)), targets]
    predictions = pd.DataFrame(
        {
            "path": paths,
            "actual": [classes[t] for t in targets],
            "predicted": [classes[q] for q in preds],
            "confidence": probs.max(1).round(4),
            "p_actual": p_true.round(4),
            "loss": (-np.log(np.clip(p_true, 1e-12, 1))).round(4),
        }
    )
    counts = confusion_matrix(targets, preds, labels=labels)
    hot = (targets[:, None] == labels[None, :]).astype(np.float32)
    return Evaluation(
        metrics=metrics,
        per_class=per_class,
        confusion=counts,
        confusion_normalized=confusion_matrix(targets, preds, labels=labels, normalize="true"),
        predictions=predictions,
        per_image=predictions,
        calibration=(probs.max(1), preds == targets),
        curves=pr_curves(probs, hot, classes),
        ap=pd.DataFrame({"class": classes, "ap": _ap_per_class(probs, hot)}),
    )


def _ap_per_class(probs: np.ndarray, hot: np.ndarray) -> list[float]:
    return [
        float(average_precision_score(hot[:, c], probs[:, c])) if hot[:, c].any() else np.nan
        for c in range(hot.shape[1])
    ]


def evaluate_multilabel(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    paths: list[str],
    thresholds: list[float] | None,
    calibration_bins: int = 10,
) -> Evaluation:
    """A label set per image, decided by the model's thresholds (0.5 where it has none).

    The confusion matrix becomes label co-occurrence: row = a label the image has, column
    = a label predicted for it (the diagonal counts the true positives)."""
    cut = np.asarray(thresholds if thresholds is not None else [0.5] * len(classes))
    truth = targets > 0.5
    decided = multilabel.decide(probs, cut)
    metrics, per_class = multilabel.multilabel_metrics(
        probs, truth.astype(np.float32), cut, classes
    )
    metrics["ece"] = multilabel.calibration_error(probs, truth, calibration_bins)
    cooccurrence = truth.T.astype(int) @ decided.astype(int)
    normalized = cooccurrence / np.maximum(truth.sum(0)[:, None], 1)
    names = np.asarray(classes, dtype=object)
    cell = np.clip(np.where(truth, probs, 1 - probs), 1e-12, 1)
    per_image = pd.DataFrame(
        {
            "path": paths,
            "actual": [" ".join(names[row]) for row in truth],
            "predicted": [" ".join(names[row]) for row in decided],
            "confidence": np.where(decided, probs, 1 - probs).mean(1).round(4),
            "loss": (-np.log(cell)).mean(1).round(4),
        }
    )
    n, n_labels = truth.shape
    predictions = pd.DataFrame(
        {
            "path": np.repeat(paths, n_labels),
            "label": np.tile(names, n),
            "actual": np.where(truth.ravel(), "yes", "no"),
            "predicted": np.where(decided.ravel(), "yes", "no"),
            "p": probs.ravel().round(4),
            "threshold": np.tile(cut, n).round(4),
        }
    )
    return Evaluation(
        metrics=metrics,
        per_class=per_class.round(4),
        confusion=cooccurrence,
        confusion_normalized=normalized,
        predictions=predictions,
        per_image=per_image,
        calibration=(probs.ravel(), truth.ravel()),
        curves=multilabel.pr_curves(probs, truth.astype(np.float32), classes),
        ap=per_class[["class", "ap"]],
    )


def pr_curves(probs: np.ndarray, hot: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Each class's precision-recall curve (one-vs-rest for single-label data)."""
    return multilabel.pr_curves(probs, hot, classes)


def confusion_frame(matrix: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """A confusion matrix as a table: one row per actual class, one column per predicted."""
    frame = pd.DataFrame(matrix, index=classes, columns=classes)
    frame.index.name = "actual"
    return frame.reset_index()


def misclassified_gallery(predictions: pd.DataFrame, n: int) -> pd.DataFrame:
    """The `n` misclassified test images with the highest loss (most confidently wrong first)."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    rows = wrong.sort_values("loss", ascending=False).head(n).copy()
    rows["gallery"] = [
        f"true {r.actual}\npred {r.predicted} ({r.confidence:.2f})" for r in rows.itertuples()
    ]
    return rows


def headline_multilabel(metrics: dict, per_class: pd.DataFrame) -> str:
    """mAP, micro-F1 at the stored thresholds, subset accuracy and the worst label (lowest
    AP among the labels with test positives)."""
    line = (
        f"test mAP {metrics['map_macro']:.4f} (macro) on {metrics['n_images']} images, "
        f"micro-F1 {metrics['f1_micro']:.4f} at the stored thresholds, subset accuracy "
        f"{metrics['subset_accuracy']:.4f}"
    )
    tested = per_class[per_class["support"] > 0]
    if len(tested):
        worst = tested.sort_values(["ap", "support"], ascending=[True, False]).iloc[0]
        line += (
            f", worst label {worst['class']} (AP {worst['ap']:.4f}, F1 {worst['f1']:.4f}, "
            f"{int(worst['support'])} images)"
        )
    return line


def headline(metrics: dict, per_class: pd.DataFrame) -> str:
    """The line a person watching a run reads first: accuracy, macro F1 and the worst class
    (lowest F1 among the classes with test images; the larger class wins a tie)."""
    line = (
        f"test accuracy {metrics['accuracy']:.4f} on {metrics['n_test']} images "
        f"(chance {metrics['chance_accuracy']:.4f}), macro F1 {metrics['f1_macro']:.4f}"
    )
    tested = per_class[per_class["support"] > 0]
    if len(tested):
        worst = tested.sort_values(["f1", "support"], ascending=[True, False]).iloc[0]
        line += (
            f", worst class {worst['class']} (F1 {worst['f1']:.4f}, recall "
            f"{worst['recall']:.4f}, {int(worst['support'])} images)"
        )
    return line
