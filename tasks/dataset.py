"""Torch datasets over the clean cache, transformed by the saved albumentations pipelines."""

from __future__ import annotations

import os
from pathlib import Path

import albumentations as A
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tasks.shards import ShardReader


class CachedImages(Dataset):
    """Images of one split, read from the clean stage's cache."""

    def __init__(
        self,
        frame: pd.DataFrame,
        clean_dir: Path,
        pipeline: A.Compose,
        classes: list[str],
        seed: int = 0,
    ) -> None:
        index = {name: i for i, name in enumerate(classes)}
        self.reader = ShardReader(clean_dir)
        self.shas = list(frame["sha256"])
        for sha in self.shas:
            self.reader.location(sha)  # a missing image fails here, not in a worker
        self.targets = [index[label] for label in frame["label"]]
        self.pipeline = pipeline
        # a pipeline loaded with A.load has no seed: without this, augmentations differ per run
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.shas)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.pipeline(image=self.reader.image(self.shas[i]))["image"]
        return image, self.targets[i]


def _seed_worker(_worker_id: int) -> None:
    """Each worker's copy of the pipeline gets its own seed, derived from the loader's."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**32)


def default_workers(device: torch.device) -> int:
    """CPU training: 0 (the model already uses every core); CUDA: min(8, cores - 1)."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def make_loader(
    dataset: CachedImages,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    seed: int,
    *,
    sampler: Sampler | None = None,
    generator: torch.Generator | None = None,
    drop_last: bool | None = None,
) -> DataLoader:
    """A loader with pinned memory on CUDA and persistent, individually seeded workers."""
    generator = generator or torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=torch.cuda.is_available(),
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        # a last training batch of one image breaks BatchNorm; drop the ragged tail
        drop_last=(shuffle and len(dataset) > batch_size) if drop_last is None else drop_last,
    )
