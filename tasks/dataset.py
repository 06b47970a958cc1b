"""Torch datasets over the clean cache, and the loader that feeds uint8 batches to the device.

The saved albumentations pipelines end in Normalize + ToTensorV2. The loader
splits them: the workers run everything before that on the cached uint8 pixels
(read from a shard's memory map, no image decode) and hand out uint8 CHW
tensors, a quarter of the bytes of float32; `BatchPrep` then runs per batch on
the device: optionally the augmentations that have a torchvision.transforms.v2
equivalent (`augment.yaml: device`), and the normalisation, as the same lookup
table albumentations uses for uint8 images, so the floats are the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tasks.label_task import SingleLabel, task_of
from tasks.shards import ShardReader

# albumentations transforms that can run on the device, as their v2 equivalent; only a run of
# them at the end of the random steps moves (the order of the pipeline is kept)
DEVICE_EQUIVALENTS = ("HorizontalFlip", "VerticalFlip", "ToGray", "ColorJitter", "Rotate")


def _v2_equivalent(step: A.BasicTransform) -> Any | None:
    """The torchvision.transforms.v2 transform doing what `step` does, or None."""
    from torchvision.transforms import v2

    name, p = type(step).__name__, float(step.p)
    if name == "HorizontalFlip":
        return v2.RandomHorizontalFlip(p)
    if name == "VerticalFlip":
        return v2.RandomVerticalFlip(p)
    if name == "ToGray":
        return v2.RandomGrayscale(p)
    if name == "ColorJitter":
        jitter = v2.ColorJitter(
            brightness=tuple(step.brightness),
            contrast=tuple(step.contrast),
            saturation=tuple(step.saturation),
            hue=tuple(step.hue),
        )
        return v2.RandomApply([jitter], p)
    if name == "Rotate" and getattr(step, "border_mode", None) == 0:  # constant fill
        low, high = step.limit
        fill = [float(v) for v in np.broadcast_to(np.asarray(step.fill, float), (3,))]
        return v2.RandomApply([v2.RandomRotation((low, high), fill=fill)], p)
    return None


class BatchPrep:
    """What runs on the batch's device: v2 augmentations (per image), then normalisation."""

    def __init__(self, mean: np.ndarray, denominator: np.ndarray, steps: list | None = None):
        # albumentations normalises uint8 through this table (albucore.normalize_lut)
        lut = (np.arange(256, dtype=np.float32) - mean.reshape(-1, 1)) * denominator.reshape(-1, 1)
        self.lut = torch.from_numpy(np.ascontiguousarray(lut, dtype=np.float32)).reshape(-1)
        self.steps = steps or []
        self._on: dict[torch.device, torch.Tensor] = {}

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:  # a pipeline that normalised in the worker already
            return images
        if self.steps:
            from torchvision.transforms import v2

            augment = v2.Compose(self.steps)
            images = torch.stack([augment(image) for image in images])
        lut = self._on.get(images.device)
        if lut is None:
            lut = self._on[images.device] = self.lut.to(images.device).view(-1, 1)
        channels = torch.arange(images.shape[1], device=images.device, dtype=torch.int32)
        # a table lookup with int32 indices (2.6x faster than int64 indexing on CPU)
        index = images.to(torch.int32) + channels.view(1, -1, 1, 1) * 256
        return torch.nn.functional.embedding(index, lut).squeeze(-1)


def split_pipeline(
    pipeline: A.Compose, device: str = "cpu"
) -> tuple[A.Compose, BatchPrep | None, list[str]]:
    """(worker pipeline, device part, names of the transforms moved to the device).

    A pipeline that does not end in a standard Normalize + ToTensorV2 runs whole in the
    workers (no device part). `device`: 'cpu' moves only the normalisation, 'gpu' also the
    trailing transforms with a v2 equivalent.
    """
    steps = list(pipeline.transforms)
    names = [type(t).__name__ for t in steps]
    if len(steps) < 2 or names[-2:] != ["Normalize", "ToTensorV2"]:
        return pipeline, None, []
    normalize = steps[-2]
    if normalize.normalization != "standard" or normalize.p < 1:
        return pipeline, None, []
    head = steps[:-2]
    moved: list = []
    names = []
    if device == "gpu":
        while len(head) > 1 and (step := _v2_equivalent(head[-1])) is not None:
            moved.insert(0, step)
            names.insert(0, type(head.pop()).__name__)
    worker = A.Compose(head, seed=getattr(pipeline, "seed", None))
    prep = BatchPrep(np.asarray(normalize.mean_np), np.asarray(normalize.denominator), moved)
    return worker, prep, names


def resolve_device_mode(mode: str, device: torch.device) -> str:
    """augment.yaml `device`: auto → gpu on CUDA, cpu elsewhere."""
    if mode == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    return mode


class CachedImages(Dataset):
    """Images of one split, read from the clean stage's shards as uint8 CHW tensors.

    With `prep` (see split_pipeline) the item is uint8 and the loader's BatchPrep
    finishes it on the device; `CachedImages(...)[i]` alone still gives the model-ready
    float tensor of the whole pipeline.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        clean_dir: Path,
        pipeline: A.Compose,
        classes: list[str],
        seed: int = 0,
        device_mode: str = "cpu",
        task: SingleLabel | None = None,
    ) -> None:
        self.reader = ShardReader(clean_dir)
        self.shas = list(frame["sha256"])
        for sha in self.shas:
            self.reader.location(sha)  # a missing image fails here, not in a worker
        # class indices, or multi-hot rows for multi-label data (tasks/label_task.py)
        self.targets = (task or task_of(frame)).targets(frame, classes)
        self.pipeline = pipeline
        self.worker_pipeline, self.prep, self.on_device = split_pipeline(pipeline, device_mode)
        self.raw = False  # set by make_loader: hand out uint8 for BatchPrep
        # a pipeline loaded with A.load has no seed: without this, augmentations differ per run
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        self.pipeline.set_random_seed(seed)
        self.worker_pipeline.set_random_seed(seed)

    def __len__(self) -> int:
        return len(self.shas)

    def uint8(self, i: int) -> torch.Tensor:
        """The worker part of the pipeline: a uint8 CHW tensor."""
        image = self.worker_pipeline(image=self.reader.image(self.shas[i]))["image"]
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self.prep is None:
            return self.pipeline(image=self.reader.image(self.shas[i]))["image"], self.targets[i]
        image = self.uint8(i)
        if not self.raw:
            image = self.prep(image[None])[0]
        return image, self.targets[i]


def _seed_worker(_worker_id: int) -> None:
    """Each worker's copy of the pipeline gets its own seed, derived from the loader's.

    (PyTorch gives each worker one intra-op thread. OpenCV's pool is left alone: resizing
    it in a child forked while the parent's pool was busy deadlocks.)"""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(torch.initial_seed() % 2**32)


def default_workers(device: torch.device) -> int:
    """CPU training: 0 (the model already uses every core); CUDA: min(8, cores - 1)."""
    if device.type != "cuda":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def split_cores(workers: int, jobs: int = 1) -> int:
    """Torch threads for one of `jobs` training processes with `workers` loader workers each:
    the cores left after the workers, shared between the jobs (at least one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, ((cores or 1) - workers * jobs) // max(1, jobs))


class DeviceLoader:
    """A DataLoader whose batches arrive on `device` model-ready: uint8 copied non_blocking
    from pinned memory one batch ahead, then finished there by the dataset's BatchPrep."""

    def __init__(self, loader: DataLoader, device: torch.device, prep: BatchPrep | None):
        self.loader, self.device, self.prep = loader, device, prep
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def _move(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch
        return (
            images.to(self.device, non_blocking=True),
            labels.to(self.device, non_blocking=True),
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = iter(self.loader)
        ahead = next(batches, None)
        ahead = self._move(ahead) if ahead is not None else None
        while ahead is not None:
            images, labels = ahead
            following = next(batches, None)
            ahead = self._move(following) if following is not None else None
            yield (self.prep(images) if self.prep is not None else images), labels


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
    device: torch.device | None = None,
) -> DeviceLoader:
    """Batches on `device` (default: CPU), model-ready; persistent, individually seeded
    workers; pinned memory when the device is CUDA."""
    device = device or torch.device("cpu")
    dataset.raw = dataset.prep is not None
    generator = generator or torch.Generator().manual_seed(seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=device.type == "cuda",
        generator=generator,
        worker_init_fn=_seed_worker if num_workers > 0 else None,
        # a last training batch of one image breaks BatchNorm; drop the ragged tail
        drop_last=(shuffle and len(dataset) > batch_size) if drop_last is None else drop_last,
    )
    return DeviceLoader(loader, device, dataset.prep)
