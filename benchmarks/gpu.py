"""GPU training throughput: resnet50 and efficientnet_b0 at 224 px, AMP bf16 + channels_last.

    python -m benchmarks.gpu [--size 224] [--batch 128] [--steps 20]

For each model, visiontune's train step against a minimal PyTorch loop (see
benchmarks/train_loop.py), printing the ratio and visiontune's absolute
img/s, to set beside timm's published training figures (RTX 3090, AMP,
channels_last): resnet50 1,218 img/s, efficientnet_b0 1,752 img/s.
Without CUDA it runs tiny (32 px, batch 4, 2 steps, fp32) so CI keeps the
code path working; those CPU figures mean nothing for speed.
"""

from __future__ import annotations

import argparse

from benchmarks.report import Result, at_least, result
from benchmarks.train_loop import compare_steps

TIMM_3090 = {"resnet50": 1218, "efficientnet_b0": 1752}


def run(
    size: int | None = None, batch: int | None = None, steps: int | None = None
) -> list[Result]:
    import torch

    cuda = torch.cuda.is_available()
    size = size or (224 if cuda else 32)
    batch = batch or (128 if cuda else 4)
    steps = steps or (20 if cuda else 2)
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
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=None, help="default: 224 on CUDA, 32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 4 on CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 20 on CUDA, 2 on CPU")
    args = parser.parse_args()
    run(args.size, args.batch, args.steps)


if __name__ == "__main__":
    main()
