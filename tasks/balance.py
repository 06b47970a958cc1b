"""The class-balance plan the train stage applies (artifacts/augment/balance.json).

Weights are computed on the train split: n_total / (n_classes × n_label), the
"balanced" weighting of scikit-learn's compute_class_weight, which gives every
class the same total weight. Training reads the plan: class_weights → a weighted
loss; weighted_sampler → WeightedRandomSampler drawing len(train) samples;
oversample → sampling with replacement, n_classes × the largest count.

Multi-label data counts each label's positive images. class_weights then weighs
each label's positives by n_negative / n_positive (BCE's `pos_weight`, at most
100), and the samplers draw an image by its rarest label: the largest weight
among its labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import torch
from torch.utils.data import WeightedRandomSampler

from params.schema import BalanceStrategy
from tasks.label_task import SingleLabel, task_of

STRATEGIES = get_args(BalanceStrategy)


def balance_plan(split: pd.DataFrame, strategy: str) -> dict:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown balance strategy {strategy!r}: one of {', '.join(STRATEGIES)}")
    task = task_of(split)
    train = split[split["split"] == "train"]
    if train.empty:
        raise ValueError("the train split is empty: nothing to balance")
    return {"strategy": strategy} | task.balance(train)


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
    pos_weights: dict[str, float] = field(default_factory=dict)  # multi-label only

    def to_dict(self) -> dict:
        """As balance.json holds it (a single-label plan has no pos_weights)."""
        plan = asdict(self)
        if not self.pos_weights:
            del plan["pos_weights"]
        return plan

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
            pos_weights={k: float(v) for k, v in raw.get("pos_weights", {}).items()},
        )

    def weights_for(self, classes: list[str]) -> list[float]:
        """One weight per class, in `classes` order (1.0 for a class the plan does not name)."""
        return [self.class_weights.get(c, 1.0) for c in classes]

    def loss_weight(self, classes: list[str]) -> torch.Tensor | None:
        """Per-class weights for the cross-entropy (multi-label: each label's pos_weight for
        the BCE), or None when the plan does not ask for it."""
        if self.strategy != "class_weights":
            return None
        if self.pos_weights:
            return torch.tensor([self.pos_weights.get(c, 1.0) for c in classes])
        return torch.tensor(self.weights_for(classes), dtype=torch.float32)

    def sampler(
        self,
        targets: list[int] | np.ndarray,
        classes: list[str],
        generator: torch.Generator,
        world_size: int = 1,
        task: SingleLabel | None = None,
    ) -> WeightedRandomSampler | None:
        """A with-replacement sampler for the sampler strategies, else None (plain shuffling).

        Under DDP each rank draws its 1/world_size share independently.
        """
        if self.strategy not in ("weighted_sampler", "oversample") or not len(targets):
            return None
        task = task or SingleLabel()
        per_image, largest = task.image_weights(targets, self.weights_for(classes))
        weights = torch.tensor(per_image, dtype=torch.double)
        total = len(targets) if self.strategy == "weighted_sampler" else len(classes) * largest
        return WeightedRandomSampler(
            weights, max(1, total // world_size), replacement=True, generator=generator
        )
