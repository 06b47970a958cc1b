"""Scaling curve: clean, split and one training epoch at 1k, 2k, 4k and 8k images.

    python -m benchmarks.scaling [--sizes 1000 2000 4000 8000]

Each size is a subset (the first N/5 files of each class) of one generated set
of 160×120 photos; clean decodes into a fresh cache, split assigns the
manifest, and one epoch trains the scale project's model (mobilenet_v3_small
at 32 px, CPU, one thread so that other load on a shared machine does not
distort the curve). The exponent k of time ∝ N^k is the slope of a least-squares
fit of log time on log N: 1 is linear, which is the goal (≤ 1.15).
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from benchmarks.report import Result, at_most, result, stopwatch

STEPS = ("clean", "split", "train epoch")


def subset(source: Path, dest: Path, count: int) -> Path:
    """dest/<class>/ holding symlinks to the first count/#classes files of each class."""
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    for folder in classes:
        (dest / folder.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(folder.iterdir())[: count // len(classes)]:
            (dest / folder.name / path.name).symlink_to(path)
    return dest


def timings(data: Path, work: Path) -> dict[str, float]:
    import torch

    from benchmarks.workspace import SCALE_PARAMS
    from params import AugmentParams, CleanParams, SplitParams, TrainParams
    from tasks.augment import build_pipelines
    from tasks.clean import clean_dataset
    from tasks.clean_manifest import build_manifest
    from tasks.model import preprocessing
    from tasks.split import plan_splits
    from tasks.train import TrainData, fit

    clean_params = CleanParams(**SCALE_PARAMS["clean"])
    with stopwatch() as clean_s:
        cleaned = clean_dataset(data, work / "clean", clean_params)
    with stopwatch() as split_s:
        split = plan_splits(build_manifest(cleaned.records, data), SplitParams()).frame
    train = TrainParams(**SCALE_PARAMS["train"])
    augment = AugmentParams(**SCALE_PARAMS["augment"])
    pipelines = build_pipelines(augment, *preprocessing(train.model))
    train_data = TrainData(split, work / "clean", *pipelines, augment.image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads slow down 5× when another process holds a core
    try:
        epoch = fit(train, train_data, show_progress=False).history[0]
    finally:
        torch.set_num_threads(threads)
    return {"clean": clean_s[0], "split": split_s[0], "train epoch": epoch.seconds}


def exponent(sizes: list[int], seconds: list[float]) -> float:
    import numpy as np

    return float(np.polyfit([math.log(n) for n in sizes], [math.log(s) for s in seconds], 1)[0])


def _short(n: int) -> str:
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def run(sizes: tuple[int, ...] = (1000, 2000, 4000, 8000)) -> list[Result]:
    from benchmarks.images import generate

    measured: dict[str, list[float]] = {step: [] for step in STEPS}
    with tempfile.TemporaryDirectory(prefix="vt-bench-scale-") as tmp:
        root = Path(tmp)
        generate(root / "all", max(sizes), size=(160, 120))
        for n in sizes:
            times = timings(subset(root / "all", root / f"data{n}", n), root / f"work{n}")
            print(f"{n} images: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
            for step in STEPS:
                measured[step].append(times[step])
    return [
        result(
            "scaling",
            f"{step} time ∝ N^k, N = {', '.join(map(_short, sizes))}",
            exponent(list(sizes), measured[step]),
            unit="",
            goal=(at_most, 1.15),
            detail=" / ".join(f"{s:.2f}" for s in measured[step]) + " s",
        )
        for step in STEPS
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 4000, 8000])
    args = parser.parse_args()
    run(tuple(args.sizes))


if __name__ == "__main__":
    main()
