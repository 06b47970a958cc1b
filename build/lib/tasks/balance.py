"""The class-balance plan the train stage applies (artifacts/augment/balance.json).

Weights are computed on the train split: n_total / (n_classes × n_label), the
"balanced" weighting of scikit-learn's compute_class_weight, which gives every
class the same total weight. Training reads the plan: class_weights → a weighted
loss; weighted_sampler → WeightedRandomSampler drawing len(train) samples;
oversample → sampling with replacement, n_classes × the largest count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch.utils.data import WeightedRandomSampler

from params.schema import BalanceStrategy

STRATEGIES = get_args(BalanceStrategy)


def balance_plan(split: pd.DataFrame, strategy: str) -> dict:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown balance strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    train = split.loc[split["split"] == "train", "label"].astype(str)
    if train.empty:
        raise ValueError("the train split is empty: nothing to balance")
    labels = np.array(sorted(train.unique()))
    counts = train.value_counts()
    weights = compute_class_weight("balanced", classes=labels, y=train.to_numpy())
    return {
        "strategy": strategy,
        "class_counts": {str(lb): int(counts[lb]) for lb in labels},
        "class_weights": {str(lb): float(w) for lb, w in zip(labels, weights, strict=True)},
    }


def plan_table(plan: dict) -> pd.DataFrame:
    """Per class: train images, weight, and the expected share of samples under the plan."""
    table = pd.DataFrame(
        {"train_images": plan["class_counts"], "weight": plan["class_weights"]}
    ).rename_axis("label")
    if plan["strategy"] in ("weighted_sampler", "oversample"):
        share = table["train_images"] * table["weight"]
    else:
        share = table["train_images"].astype(float)
    table["sample_share"] = (share / share.sum()).round(4)
    return table.reset_index()


class BalanceError(ValueError):
    pass


@dataclass
class BalancePlan:
    strategy: BalanceStrategy = "none"
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
