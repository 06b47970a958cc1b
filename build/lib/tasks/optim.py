"""Optimizer, LR schedule and unfreezing schedule of the fine-tuning recipe.

Discriminative LRs (fastai/ULMFiT, timm's layer decay): the head learns at
`lr`, the top backbone stage at `lr × backbone_lr_mult`, and each stage below
at the one above's LR × `layer_lr_decay`. Every group is split in two so
norms and biases (1-d tensors) get no weight decay.
"""

from __future__ import annotations

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
)

from params import TrainParams
from tasks.model import Classifier


def stage_lrs(params: TrainParams, n_stages: int) -> list[float]:
    """The LR of each backbone stage, input side first."""
    top = params.lr * params.backbone_lr_mult
    return [top * params.layer_lr_decay ** (n_stages - 1 - i) for i in range(n_stages)]


def param_groups(clf: Classifier, params: TrainParams) -> list[dict]:
    """Optimizer groups: head, then each backbone stage top-down, each with and without decay."""
    stages = clf.stage_parameters()
    named = [("head", clf.head_parameters(), params.lr)]
    lrs = stage_lrs(params, len(stages))
    named += [(f"stage{i}", stages[i], lrs[i]) for i in reversed(range(len(stages)))]
    groups = []
    for name, tensors, lr in named:
        decay = [p for p in tensors if p.ndim > 1]
        no_decay = [p for p in tensors if p.ndim <= 1]
        wd = params.weight_decay
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": wd})
        groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0})
    return [g for g in groups if g["params"]]


def make_optimizer(groups: list[dict], params: TrainParams) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            groups, momentum=params.momentum, nesterov=params.nesterov and params.momentum > 0
        )
    return torch.optim.AdamW(groups)


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> LRScheduler:
    """Stepped once per batch: warmup then cosine/constant, or a one-cycle."""
    total = max(1, params.epochs * steps_per_epoch)
    warmup = min(total - 1, round(params.warmup_epochs * steps_per_epoch))
    if params.schedule == "onecycle":
        return OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total,
            pct_start=min(0.99, max(warmup, 1) / total),
            anneal_strategy="cos",
            # Adam's beta1 / SGD's momentum cycle 0.95 → 0.85 → 0.95 (fastai); not plain SGD
            cycle_momentum=params.optimizer == "adamw" or params.momentum > 0,
        )
    if params.schedule == "cosine":
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    else:
        main = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup <= 0:
        return main
    ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def trainable_stages(params: TrainParams, epoch: int, n_stages: int) -> int:
    """How many backbone stages, counted from the top, train in `epoch` (0-based).

    None during the first `freeze_epochs`; then all at once, or
    `unfreeze_stages` more per epoch (gradual unfreezing, ULMFiT).
    """
    if epoch < params.head_epochs:
        return 0
    if params.unfreeze_stages == 0:
        return n_stages
    return min(n_stages, params.unfreeze_stages * (epoch - params.head_epochs + 1))
