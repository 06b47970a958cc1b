"""Evaluation figures as PNGs: confusion matrices, reliability diagram, image galleries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from tasks.files import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend: figures are files, never windows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


ARTIFACT_WIDTH_PX = 800  # widest image that fits the Prefect UI's artifact pane (1,400 px window)


def save_figure(fig, out_png: Path, dpi: int = 100) -> None:
    """Every figure the project writes goes through here: an atomic PNG, then closed."""
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def plot_confusion(
    counts: np.ndarray, normalized: np.ndarray, classes: list[str], out_png: Path
) -> None:
    """Counts beside row-normalised rates (the diagonal is each class's recall)."""
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    size = 2.5 + 0.6 * len(classes)
    # stacked, not side by side, and never wider than an artifact pane: the Prefect UI shows
    # an image at its pixel size, and a 1,400 px window leaves the pane about 850 px
    fig, axes = plt.subplots(2, 1, figsize=(size, 2 * size))
    for ax, matrix, title, fmt in (
        (axes[0], counts, "test split: counts", "d"),
        (axes[1], normalized, "share of each actual class", ".2f"),
    ):
        ConfusionMatrixDisplay(matrix, display_labels=classes).plot(
            ax=ax, cmap="Blues", xticks_rotation=45, colorbar=False, values_format=fmt
        )
        ax.set_title(title)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=min(100, int(ARTIFACT_WIDTH_PX / size)))


def plot_reliability(
    probs: np.ndarray, targets: np.ndarray, bins: int, ece: float, out_png: Path
) -> pd.DataFrame:
    """Top-1 confidence vs accuracy per bin (sklearn's calibration_curve); returns the bins."""
    correct = (probs.argmax(1) == targets).astype(int)
    return plot_calibration(probs.max(1), correct, bins, ece, out_png)


def plot_calibration(
    confidence: np.ndarray,
    correct: np.ndarray,
    bins: int,
    ece: float,
    out_png: Path,
    what: str = "confidence (top-1 probability)",
    counted: str = "images",
) -> pd.DataFrame:
    """A reliability diagram of any (predicted probability, outcome) pairs: multi-label
    data pools every (image, label) probability with whether the label is there."""
    from sklearn.calibration import calibration_curve

    correct = np.asarray(correct).astype(int)
    if correct.min() == correct.max():  # calibration_curve needs both outcomes
        accuracy, mean_conf = np.array([correct.mean()]), np.array([confidence.mean()])
    else:
        accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=bins)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    ax.plot(mean_conf, accuracy, marker="o", label="model")
    ax.hist(
        confidence,
        bins=bins,
        range=(0, 1),
        weights=np.full(len(confidence), 1 / len(confidence)),
        alpha=0.25,
        label=f"share of {counted}",
    )
    ax.set_xlabel(what)
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability diagram (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)
    return pd.DataFrame({"confidence": mean_conf.round(4), "accuracy": accuracy.round(4)})


def plot_pr_curves(curves: pd.DataFrame, per_class: pd.DataFrame, out_png: Path) -> None:
    """Every class's precision-recall curve (one-vs-rest) beside its average precision."""
    plt = pyplot()
    ap = per_class.dropna(subset=["ap"]).sort_values("ap")
    height = max(3.5, 0.16 * len(ap) + 1)
    fig, (ax_pr, ax_ap) = plt.subplots(1, 2, figsize=(8.5, height))
    many = curves["label"].nunique() > 10
    for label, curve in curves.groupby("label", sort=False):
        ax_pr.plot(
            curve["recall"], curve["precision"], lw=0.8, alpha=0.5 if many else 1, label=label
        )
    ax_pr.set_xlabel("recall")
    ax_pr.set_ylabel("precision")
    ax_pr.set_xlim(0, 1)
    ax_pr.set_ylim(0, 1.02)
    ax_pr.set_title("precision-recall per class (test)")
    ax_pr.grid(alpha=0.3)
    if not many:
        ax_pr.legend(fontsize=7, loc="lower left")
    ax_ap.barh(ap["class"].astype(str), ap["ap"], color="tab:blue")
    ax_ap.set_xlim(0, 1)
    ax_ap.set_title("average precision")
    ax_ap.tick_params(axis="y", labelsize=7 if len(ap) < 40 else 5)
    ax_ap.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    save_figure(fig, out_png, dpi=min(90, int(ARTIFACT_WIDTH_PX / 8.5)))


def plot_gallery(
    rows: pd.DataFrame, image_dir: Path, title: str, out_png: Path, caption: str = "gallery"
) -> None:
    """A grid of cached images (column `sha256`, the clean cache in image_dir) captioned
    with `rows[caption]`."""
    from tasks.shards import ShardReader

    plt = pyplot()
    n = max(1, len(rows))
    cols = min(4, n)  # 4 × 1.9 in at 90 dpi fits the Prefect UI's artifact pane
    lines = (n + cols - 1) // cols
    fig, axes = plt.subplots(lines, cols, figsize=(1.9 * cols, 2.2 * lines), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    reader = ShardReader(image_dir)
    for ax, (_, row) in zip(axes.flat, rows.iterrows(), strict=False):
        ax.imshow(reader.image(row["sha256"]))
        ax.set_title(row[caption], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=90)
