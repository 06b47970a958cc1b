"""Torch datasets over the clean cache, transformed by the saved albumentations pipelines."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from tasks.augment import read_rgb


class CachedImages(Dataset):
    """Images of one split, read from the clean stage's cache."""

    def __init__(
        self, frame: pd.DataFrame, clean_dir: Path, pipeline: A.Compose, classes: list[str]
    ) -> None:
        index = {name: i for i, name in enumerate(classes)}
        self.paths = [clean_dir / c for c in frame["cache"]]
        self.targets = [index[label] for label in frame["label"]]
        self.pipeline = pipeline

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.pipeline(image=read_rgb(self.paths[i]))["image"]
        return image, self.targets[i]


def make_loader(
    dataset: CachedImages, batch_size: int, shuffle: bool, num_workers: int, seed: int
) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=generator,
        # a last training batch of one image breaks BatchNorm; drop the ragged tail
        drop_last=shuffle and len(dataset) > batch_size,
    )
