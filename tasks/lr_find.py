"""The LR range test (Smith 2015; fastai's lr_find): raise the LR exponentially, watch the loss.

Runs the recipe's first phase (head only when `freeze_epochs > 0`, else the
whole network with its discriminative LRs, all scaled together) on training
batches with torch's ExponentialLR, stops once the smoothed loss diverges,
and suggests the head LR at the steepest descent of the smoothed loss (and
reports fastai's "minimum / 10" rule beside it). The model is thrown away.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torch.optim.lr_scheduler import ExponentialLR

from params import TrainParams
from tasks.dataset import CachedImages, make_loader
from tasks.figures import pyplot, save_figure
from tasks.model import build_classifier, pick_device
from tasks.optim import make_optimizer, param_groups, trainable_stages
from tasks.train import TrainData, resolved, seed_everything


@dataclass
class LRFind:
    curve: pd.DataFrame  # step, lr, loss, smoothed
    steepest: float  # LR at the steepest descent of the smoothed loss
    min_over_10: float  # LR at the minimum of the smoothed loss / 10
    suggestion: float


def lr_range_test(
    params: TrainParams,
    data: TrainData,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    beta: float = 0.98,
    diverge: float = 4.0,
) -> LRFind:
    seed_everything(params.seed)
    device = pick_device(params.device)
    classes = data.classes
    clf = build_classifier(params.model, params.weights, len(classes), params.dropout)
    clf.net.to(device).train()
    clf.set_trainable_stages(trainable_stages(params, 0, len(clf.stages)), params.batchnorm)
    train_set = CachedImages(
        data.part("train"), data.clean_dir, data.train_pipeline, classes, params.seed
    )
    if not len(train_set):
        raise ValueError("the train split is empty")
    loader = make_loader(train_set, params.batch_size, True, 0, params.seed)
    # the recipe's groups keep their LR ratios; the head's LR sweeps start_lr → end_lr
    groups = param_groups(clf, params)
    for g in groups:
        g["lr"] = start_lr * g["lr"] / params.lr
    optimizer = make_optimizer(groups, params)
    scheduler = ExponentialLR(optimizer, gamma=(end_lr / start_lr) ** (1 / max(1, steps - 1)))
    criterion = data.task.loss(resolved(params, data).label_smoothing, None)  # CE or BCE
    rows: list[tuple[int, float, float, float]] = []
    avg, best = 0.0, math.inf
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    for step, (images, labels) in zip(range(steps), batches, strict=False):
        lr = optimizer.param_groups[0]["lr"]
        loss = criterion(clf.net(images.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        avg = beta * avg + (1 - beta) * loss.item()
        smoothed = avg / (1 - beta ** (step + 1))
        rows.append((step, lr, loss.item(), smoothed))
        best = min(best, smoothed)
        if not math.isfinite(smoothed) or (step > 5 and smoothed > diverge * best):
            break
    curve = pd.DataFrame(rows, columns=["step", "lr", "loss", "smoothed"])
    return LRFind(curve=curve, **suggest(curve))


def suggest(curve: pd.DataFrame) -> dict[str, float]:
    """Steepest descent and min/10 of the smoothed loss (ignoring the noisy first steps)."""
    usable = curve.iloc[min(5, len(curve) // 10) :]
    if len(usable) < 3:
        raise ValueError("too few LR-finder steps for a suggestion: raise --steps")
    log_lr = np.log10(usable["lr"].to_numpy())
    slope = np.gradient(usable["smoothed"].to_numpy(), log_lr)
    steepest = float(usable["lr"].iloc[int(np.argmin(slope))])
    min_over_10 = float(usable["lr"].iloc[int(usable["smoothed"].to_numpy().argmin())] / 10)
    # the geometric middle of the two rules: fastai's defaults sit in this range
    suggestion = float(10 ** ((np.log10(steepest) + np.log10(min_over_10)) / 2))
    return {"steepest": steepest, "min_over_10": min_over_10, "suggestion": suggestion}


def plot_lr_find(result: LRFind, out_png: Path) -> None:
    fig, ax = pyplot().subplots(figsize=(6, 4))
    ax.plot(result.curve["lr"], result.curve["loss"], alpha=0.3, label="loss")
    ax.plot(result.curve["lr"], result.curve["smoothed"], label="smoothed loss")
    for lr, style, name in (
        (result.steepest, ":", "steepest"),
        (result.min_over_10, "--", "min / 10"),
        (result.suggestion, "-", "suggestion"),
    ):
        ax.axvline(lr, linestyle=style, color="red", alpha=0.7, label=f"{name} {lr:.1e}")
    ax.set_xscale("log")
    ax.set_xlabel("head learning rate")
    ax.set_ylabel("training loss")
    ax.set_title("LR range test")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out_png, dpi=90)
