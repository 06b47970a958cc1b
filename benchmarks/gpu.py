"""GPU training throughput: resnet50 and efficientnet_b0 at 224 px, AMP bf16 + channels_last.

    python -m benchmarks.gpu [--size 224] [--batch 128] [--steps 20]

For each model, visiontune's train step against a minimal PyTorch loop (see
benchmarks/train_loop.py), printing the ratio and visiontune's absolute
img/s, to set beside timm's published training figures (RTX 3090, AMP,
channels_last): resnet50 1,218 img/s, efficientnet_b0 1,752 img/s.
Then each model through visiontune's real `fit` (one epoch, bf16 +
channels_last, workers, pinned memory, uint8 batches normalised on the device)
on a sharded clean cache of `--images` generated photos, against the
minimal loop on synthetic data already on the device: the loader is not the
bottleneck when the ratio is near 1.
Without CUDA it runs tiny (32 px, batch 4, 2 steps, fp32, 48 images) so CI
keeps the code path working; those CPU figures mean nothing for speed.
"""

from __future__ import annotations

import argparse

from benchmarks.report import Result, at_least, result
from benchmarks.train_loop import compare_steps

TIMM_3090 = {"resnet50": 1218, "efficientnet_b0": 1752}


def fit_rate(model: str, size: int, batch: int, images: int, cuda: bool) -> tuple[float, float]:
    """(img/s, data-wait share) of one epoch of the real `fit` on a sharded cache."""
    import tempfile
    from pathlib import Path

    from benchmarks.images import generate
    from benchmarks.workspace import train_data
    from params import TrainParams
    from tasks.train import fit

    with tempfile.TemporaryDirectory(prefix="vt-bench-gpu-") as tmp:
        generate(Path(tmp) / "data", images, size=(320, 240), jpeg_only=True)
        data = train_data(Path(tmp) / "data", Path(tmp) / "clean", model, size, max(size, 64))
        params = TrainParams(
            model=model,
            weights="none",
            epochs=1,
            freeze_epochs=0,
            batch_size=batch,
            device="auto",
            amp="bf16" if cuda else "off",
            channels_last="on" if cuda else "off",
            compile=cuda,
        )
        (metrics,) = fit(params, data, show_progress=False).history
    return metrics.images_per_s, metrics.data_wait


def run(
    size: int | None = None,
    batch: int | None = None,
    steps: int | None = None,
    images: int | None = None,
) -> list[Result]:
    import torch

    cuda = torch.cuda.is_available()
    size = size or (224 if cuda else 32)
    batch = batch or (128 if cuda else 4)
    steps = steps or (20 if cuda else 2)
    images = images or (20_000 if cuda else 48)
    rows = []
    for model, published in TIMM_3090.items():
        ours, base, setting = compare_steps(
            model,
            "none",  # random init: the same speed, and no weights download
            size,
            batch,
            steps,
            rounds=2 if cuda else 1,
            amp="bf16" if cuda else "off",
            channels_last="on" if cuda else "off",
        )
        note = f"timm on an RTX 3090: {published} img/s" if cuda else "no CUDA: a smoke run"
        rows.append(
            result(
                "gpu",
                f"{model} train img/s vs minimal loop",
                ours / base,
                goal=(at_least, 0.95) if cuda else None,
                detail=f"{ours:.0f} vs {base:.0f} img/s, {setting}; {note}",
            )
        )
        rate, wait = fit_rate(model, size, batch, images, cuda)
        util = ""
        if cuda:
            try:
                util = f", GPU utilisation {torch.cuda.utilization()}% at the end"
            except Exception:  # needs pynvml
                util = ""
        rows.append(
            result(
                "gpu",
                f"{model} real `fit` on a sharded cache vs minimal loop on synthetic data",
                rate / base,
                goal=(at_least, 0.9) if cuda else None,
                detail=f"{rate:.0f} vs {base:.0f} img/s, {images} images, data wait "
                f"{wait:.0%}{util}; {note}",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="default: 224 on CUDA, 32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 4 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 20 on CUDA, 2 on CPU")
    parser.add_argument("--images", type=int, default=None, help="default: 20000 on CUDA, 48")
    args = parser.parse_args()
    run(args.size, args.batch, args.steps, args.images)


if __name__ == "__main__":
    main()
