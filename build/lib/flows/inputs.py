"""What the training stages read from upstream stages, gathered in one place.

Kept out of flows/project.py so that stages which never train (clean, split)
do not import the training code, and their dvc.yaml deps stay narrow.
"""

from __future__ import annotations

import pandas as pd

from flows.project import Project
from tasks.augment import load_pipeline
from tasks.balance import BalancePlan
from tasks.train import TrainData


def train_data(project: Project, image_size: int | None = None) -> TrainData:
    """Split, clean cache, saved pipelines and balance plan (the files in STAGES' reads)."""
    augment = project.artifacts("augment")
    if image_size is None:
        image_size = project.params("augment").image_size  # type: ignore[attr-defined]
    split = project.artifacts("split") / "split.parquet"
    return TrainData(
        split=pd.read_parquet(split),
        clean_dir=project.artifacts("clean"),
        train_pipeline=load_pipeline(augment / "train.yaml"),
        eval_pipeline=load_pipeline(augment / "eval.yaml"),
        image_size=image_size,
        balance=BalancePlan.read(augment / "balance.json"),
        clean=project.params("clean"),  # type: ignore[arg-type]
        augment_device=project.params("augment").device,  # type: ignore[attr-defined]
    )
