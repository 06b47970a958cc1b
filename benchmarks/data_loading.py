"""Data loading: images/s that visiontune's training loader delivers vs ImageFolder + PIL.

    python -m benchmarks.data_loading [--images 1000] [--workers 0 2] [--rounds 2]

Both sides deliver the same thing: shuffled batches of 32 normalised 96×96
tensors with the same augmentations (RandomResizedCrop 70–100%, flip, rotate
±15°, colour jitter). The baseline is torchvision's ImageFolder with PIL
transforms on the original files (500×375 JPEGs, like phone photos scaled
down); visiontune reads the clean stage's cache (decoded once, EXIF-upright,
resized to 128 px) through the augment stage's albumentations pipeline. An
epoch is timed after a warm-up epoch (workers started), best of `rounds`.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.report import Result, at_least, result, stopwatch

IMAGE_SIZE, BATCH = 96, 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def baseline_loader(data: Path, workers: int):
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    transform = T.Compose(
        [
            T.RandomResizedCrop(IMAGE_SIZE, scale=(0.7, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.RandomRotation(15, fill=255)], p=0.5),
            T.RandomApply([T.ColorJitter(0.2, 0.2, 0.2)], p=0.8),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    dataset = datasets.ImageFolder(str(data), transform=transform)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
    )


def visiontune_loader(clean_dir: Path, frame, workers: int):
    from params import AugmentParams
    from tasks.augment import build_pipelines
    from tasks.dataset import CachedImages, make_loader

    train, _ = build_pipelines(AugmentParams(image_size=IMAGE_SIZE), MEAN, STD)
    classes = sorted(frame["label"].unique())
    return make_loader(CachedImages(frame, clean_dir, train, classes), BATCH, True, workers, 0)


def epoch_rate(loader) -> float:
    """Images/s over one full epoch."""
    with stopwatch() as t:
        n = sum(len(labels) for _, labels in loader)
    return n / t[0]


def prepare(root: Path, images: int):
    """Original JPEGs under root/data and their clean cache under root/clean."""
    from benchmarks.images import generate
    from params import CleanParams
    from tasks.clean import clean_dataset
    from tasks.clean_manifest import build_manifest

    data, clean = root / "data", root / "clean"
    generate(data, images, size=(500, 375), jpeg_only=True)
    cleaned = clean_dataset(data, clean, CleanParams())
    return data, clean, build_manifest(cleaned.records)


def run(images: int = 1000, workers: tuple[int, ...] = (0, 2), rounds: int = 2) -> list[Result]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="vt-bench-load-") as tmp:
        data, clean, frame = prepare(Path(tmp), images)
        for n in workers:
            base, ours = baseline_loader(data, n), visiontune_loader(clean, frame, n)
            epoch_rate(base), epoch_rate(ours)  # warm-up: workers start, files in page cache
            base_rate = ours_rate = 0.0
            for _ in range(rounds):
                base_rate = max(base_rate, epoch_rate(base))
                ours_rate = max(ours_rate, epoch_rate(ours))
            rows.append(
                result(
                    "data loading",
                    f"train loader img/s vs ImageFolder+PIL, {n} workers",
                    ours_rate / base_rate,
                    goal=(at_least, 2.0),
                    detail=f"{ours_rate:.0f} vs {base_rate:.0f} img/s ({images} images)",
                )
            )
            del base, ours
    return rows


def per_core(images: int = 600, rounds: int = 2) -> list[Result]:
    """GPU sizes on one core: 224 px RandomResizedCrop + flip, model-ready batches of 128,
    from a 256 px cache vs ImageFolder + PIL on the 500×375 JPEGs (0 workers, 1 thread)."""
    import albumentations as A
    import torch
    from albumentations.pytorch import ToTensorV2
    from torchvision import datasets
    from torchvision import transforms as T

    from benchmarks.images import generate
    from params import CleanParams
    from tasks.clean import clean_dataset
    from tasks.clean_manifest import build_manifest
    from tasks.dataset import CachedImages, make_loader

    size, batch = 224, 128
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="vt-bench-core-") as tmp:
            data, clean = Path(tmp) / "data", Path(tmp) / "clean"
            generate(data, images, size=(500, 375), jpeg_only=True)
            frame = build_manifest(clean_dataset(data, clean, CleanParams(max_side=256)).records)
            baseline = datasets.ImageFolder(
                str(data),
                transform=T.Compose(
                    [
                        T.RandomResizedCrop(size),
                        T.RandomHorizontalFlip(),
                        T.ToTensor(),
                        T.Normalize(MEAN, STD),
                    ]
                ),
            )
            base = torch.utils.data.DataLoader(baseline, batch_size=batch, shuffle=True)
            pipeline = A.Compose(
                [
                    A.RandomResizedCrop(size=(size, size), p=1.0),
                    A.HorizontalFlip(p=0.5),
                    A.Normalize(mean=MEAN, std=STD, max_pixel_value=255.0),
                    ToTensorV2(),
                ],
                seed=0,
            )
            classes = sorted(frame["label"].unique())
            ours = make_loader(CachedImages(frame, clean, pipeline, classes), batch, True, 0, 0)
            epoch_rate(base), epoch_rate(ours)  # warm-up: page cache
            base_rate = ours_rate = uint8_rate = 0.0
            for _ in range(rounds):
                base_rate = max(base_rate, epoch_rate(base))
                ours_rate = max(ours_rate, epoch_rate(ours))
                # what a CUDA run moves to the device: the uint8 batches before BatchPrep
                uint8_rate = max(uint8_rate, epoch_rate(ours.loader))
    finally:
        torch.set_num_threads(threads)
    where = f"{images} images of 500×375, cache at 256 px, batch {batch}"
    return [
        result(
            "data loading",
            "uint8 batches/core at 224 px (crop + flip; the device normalises) vs ImageFolder+PIL",
            uint8_rate / base_rate,
            goal=(at_least, 4.0),
            detail=f"{uint8_rate:.0f} vs {base_rate:.0f} img/s on 1 core (goal ≥ 1500 img/s; "
            f"{where})",
        ),
        result(
            "data loading",
            "float batches/core at 224 px, normalised on the CPU, vs ImageFolder+PIL",
            ours_rate / base_rate,
            detail=f"{ours_rate:.0f} vs {base_rate:.0f} img/s on 1 core ({where})",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    run(args.images, tuple(args.workers), args.rounds)
    per_core(rounds=args.rounds)


if __name__ == "__main__":
    main()
