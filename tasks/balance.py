"""The class-balance plan the train stage applies (artifacts/augment/balance.json).

Weights are computed on the train split: n_total / (n_classes × n_label), the
"balanced" weighting of scikit-learn's compute_class_weight, which gives every
class the same total weight. Training reads the plan: class_weights → a weighted
loss; weighted_sampler → WeightedRandomSampler drawing len(train) samples;
oversample → sampling with replacement, n_classes × the largest count.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils.class_weight import compute_class_weight

STRATEGIES = ("none", "weighted_sampler", "class_weights", "oversample")


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
