"""Benchmark inputs built the way the stages build them: raw folder → clean → split → pipelines."""

from __future__ import annotations

from pathlib import Path

from params import AugmentParams, CleanParams, SplitParams


def train_data(data: Path, clean_dir: Path, model: str, image_size: int, max_side: int = 128):
    """TrainData over `data` (an ImageFolder tree), cleaned into clean_dir and split 80/10/10."""
    from tasks.augment import build_pipelines
    from tasks.clean import build_manifest, clean_dataset
    from tasks.model import preprocessing
    from tasks.split import assign_splits
    from tasks.train import TrainData

    clean = CleanParams(max_side=max_side)
    manifest = build_manifest(clean_dataset(data, clean_dir, clean).records)
    split = assign_splits(manifest, SplitParams(train=0.8, val=0.1, test=0.1))
    train, evaluation = build_pipelines(AugmentParams(image_size=image_size), *preprocessing(model))
    return TrainData(split, clean_dir, train, evaluation, image_size=image_size, clean=clean)
