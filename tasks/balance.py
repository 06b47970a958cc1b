"""The augment stage's class-balance plan (artifacts/augment/balance.json), applied in training.

`class_weights` → a weighted cross-entropy; `weighted_sampler` → a
WeightedRandomSampler drawing len(train) images per epoch; `oversample` → the
same sampler drawing n_classes × the largest class count. A missing file means
strategy `none`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import WeightedRandomSampler

Strategy = Literal["none", "weighted_sampler", "class_weights", "oversample"]
STRATEGIES = ("none", "weighted_sampler", "class_weights", "oversample")


class BalanceError(ValueError):
    pass


@dataclass
class BalancePlan:
    strategy: Strategy = "none"
    class_counts: dict[str, int] = field(default_factory=dict)
    class_weights: dict[str, float] = field(default_factory=dict)

    @classmethod
    def read(cls, path: Path) -> BalancePlan:
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        if raw.get("strategy", "none") not in STRATEGIES:
            raise BalanceError(f"{path}: unknown strategy {raw.get('strategy')!r}")
        return cls(
            strategy=raw.get("strategy", "none"),
            class_counts={k: int(v) for k, v in raw.get("class_counts", {}).items()},
            class_weights={k: float(v) for k, v in raw.get("class_weights", {}).items()},
        )

    def weights_for(self, classes: list[str]) -> list[float]:
        """One weight per class, in `classes` order (1.0 for a class the plan does not name)."""
        return [self.class_weights.get(c, 1.0) for c in classes]

    def loss_weight(self, classes: list[str]) -> torch.Tensor | None:
        """Per-class weights for the cross-entropy, or None when the plan does not ask for it."""
        if self.strategy != "class_weights":
            return None
        return torch.tensor(self.weights_for(classes), dtype=torch.float32)

    def sampler(
        self,
        targets: list[int],
        classes: list[str],
        generator: torch.Generator,
        world_size: int = 1,
    ) -> WeightedRandomSampler | None:
        """A with-replacement sampler for the sampler strategies, else None (plain shuffling).

        Under DDP each rank draws its 1/world_size share independently.
        """
        if self.strategy not in ("weighted_sampler", "oversample") or not targets:
            return None
        per_class = self.weights_for(classes)
        weights = torch.tensor([per_class[t] for t in targets], dtype=torch.double)
        if self.strategy == "weighted_sampler":
            total = len(targets)
        else:
            total = len(classes) * max(torch.bincount(torch.tensor(targets)).tolist())
        return WeightedRandomSampler(
            weights, max(1, total // world_size), replacement=True, generator=generator
        )
