"""Losses the label tasks (tasks/label_task.py) train with beyond torch's own."""

from __future__ import annotations

import torch
from torch import nn


class SmoothedBCE(nn.Module):
    """BCE-with-logits on targets smoothed towards ½ (y(1-ε) + ε/2), with an optional
    `pos_weight` per label (the balance plan's class_weights strategy)."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.smoothing = smoothing
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        targets = targets.float()
        if self.smoothing:
            targets = targets * (1 - self.smoothing) + self.smoothing / 2
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets, pos_weight=self.pos_weight
        )
