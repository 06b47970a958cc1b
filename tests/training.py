"""Tiny real training inputs: shape images → clean → split → pipelines, as the stages make them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from params import AugmentParams, CleanParams, SplitParams
from tasks.augment import build_pipelines
from tasks.clean import clean_images
from tasks.model import LITE0, preprocessing
from tasks.train import TrainData
from tests.images import write_image_folder

CLEAN = CleanParams(max_side=32)


def tiny_train_data(root: Path, per_class: int = 10) -> TrainData:
    """Three shape classes at 32 px, split 60/20/20; the raw images stay under root/data."""
    write_image_folder(root / "data", per_class=per_class)
    records, _ = clean_images.fn(root / "data", root / "clean", CLEAN)
    manifest = pd.DataFrame([r.__dict__ for r in records])
    split = assign(manifest)
    mean, std = preprocessing(LITE0)
    train_pipe, eval_pipe = build_pipelines(AugmentParams(image_size=32), mean, std)
    return TrainData(split, root / "clean", train_pipe, eval_pipe, image_size=32, clean=CLEAN)


def assign(manifest: pd.DataFrame) -> pd.DataFrame:
    from tasks.split import assign_splits

    return assign_splits(manifest, SplitParams(train=0.6, val=0.2, test=0.2))
