"""Training curves as a PNG, for the Prefect UI and for people without `dvc plots`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from tasks.figures import pyplot, save_figure


def plot_curves(history: pd.DataFrame, out_png: Path) -> None:
    fig, (ax_loss, ax_acc) = pyplot().subplots(1, 2, figsize=(9, 3.5))
    epochs = history["epoch"] + 1
    for col in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, history[col], marker="o", label=col)
    scores = ["train_accuracy", "val_accuracy"] + (["val_map"] if "val_map" in history else [])
    for col in scores:
        ax_acc.plot(epochs, history[col], marker="o", label=col)
    named = "accuracy" if len(scores) == 2 else "label accuracy and mAP"
    for ax, title in ((ax_loss, "loss"), (ax_acc, named)):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=90)
