"""Test-split metrics with scikit-learn, a confusion matrix and a calibration figure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    per_class: pd.DataFrame
    confusion: np.ndarray
    predictions: pd.DataFrame


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, bins: int = 15) -> float:
    """Gap between confidence and accuracy, averaged over equal-width confidence bins."""
    confidence = probs.max(1)
    correct = probs.argmax(1) == targets
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(ece)


def evaluate_predictions(
    probs: np.ndarray, targets: np.ndarray, classes: list[str], paths: list[str], top_k: int
) -> Evaluation:
    labels = np.arange(len(classes))
    preds = probs.argmax(1)
    metrics: dict[str, float] = {
        "accuracy": float(accuracy_score(targets, preds)),
        "n_test": len(targets),
        "n_classes": len(classes),
        "chance_accuracy": float(np.bincount(targets, minlength=len(classes)).max() / len(targets)),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(
            targets, preds, labels=labels, average=avg, zero_division=0
        )
        metrics |= {f"precision_{avg}": float(p), f"recall_{avg}": float(r), f"f1_{avg}": float(f)}
    k = min(top_k, len(classes) - 1)
    if k >= 2:
        metrics[f"top{k}_accuracy"] = float(
            top_k_accuracy_score(targets, probs, k=k, labels=labels)
        )
    metrics["log_loss"] = float(log_loss(targets, probs, labels=labels))
    metrics["ece"] = expected_calibration_error(probs, targets)
    p, r, f, support = precision_recall_fscore_support(
        targets, preds, labels=labels, zero_division=0
    )
    per_class = pd.DataFrame(
        {"class": classes, "precision": p, "recall": r, "f1": f, "support": support}
    ).round(4)
    predictions = pd.DataFrame(
        {
            "path": paths,
            "actual": [classes[t] for t in targets],
            "predicted": [classes[q] for q in preds],
            "confidence": probs.max(1).round(4),
        }
    )
    return Evaluation(
        metrics=metrics,
        per_class=per_class,
        confusion=confusion_matrix(targets, preds, labels=labels),
        predictions=predictions,
    )


def plot_confusion(confusion: np.ndarray, classes: list[str], out_png) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    from tasks.files import atomic_path

    size = 2.5 + 0.6 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(confusion, display_labels=classes).plot(
        ax=ax, cmap="Blues", xticks_rotation=45, colorbar=False
    )
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
