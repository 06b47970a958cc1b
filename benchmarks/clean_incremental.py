"""Full clean vs incremental clean after adding 1% new images: prints both times and the ratio.

    python benchmarks/clean_incremental.py [--images 5000] [--root /tmp/clean-bench] [--keep]

Generates real JPEG/PNG images (shapes on noisy backgrounds, 5 classes) under
--root, cleans them into a fresh folder (full), adds 1% more images and cleans
again into the same folder (incremental), then deletes --root unless --keep.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from params import CleanParams
from tasks.clean import clean_dataset

CLASSES = ("circle", "square", "triangle", "cross", "ring")


def photo(kind: str, rng: random.Random, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A shape on a noisy gradient: decodes like a small photo, never a near-duplicate."""
    w, h = size
    base = np.linspace(rng.randint(0, 120), rng.randint(120, 255), w, dtype=np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (h, w, 3))
    pixels = np.clip(base[None, :, None] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.randint(30, 90)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
    fill = tuple(rng.randint(0, 255) for _ in range(3))
    box = (cx - r, cy - r, cx + r, cy + r)
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif kind == "cross":
        draw.rectangle((cx - r, cy - r // 4, cx + r, cy + r // 4), fill=fill)
        draw.rectangle((cx - r // 4, cy - r, cx + r // 4, cy + r), fill=fill)
    else:
        draw.ellipse(box, outline=fill, width=max(3, r // 4))
    return img


def generate(folder: Path, count: int, seed: int) -> None:
    rng = random.Random(seed)
    for i in range(count):
        kind = CLASSES[i % len(CLASSES)]
        (folder / kind).mkdir(parents=True, exist_ok=True)
        ext = "jpg" if i % 3 else "png"
        photo(kind, rng).save(folder / kind / f"{seed}_{i:06d}.{ext}", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--root", type=Path, default=Path("/tmp/clean-bench"))
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    data, out = args.root / "data", args.root / "clean"
    shutil.rmtree(args.root, ignore_errors=True)
    try:
        started = time.perf_counter()
        generate(data, args.images, seed=0)
        print(f"generated {args.images} images in {time.perf_counter() - started:.1f} s")
        params = CleanParams()

        started = time.perf_counter()
        full = clean_dataset(data, out, params)
        full_s = time.perf_counter() - started
        print(
            f"full clean: {len(full.processed)} decoded, {len(full.records)} kept, {full_s:.1f} s"
        )

        added = max(1, args.images // 100)
        generate(data, added, seed=1)
        started = time.perf_counter()
        incremental = clean_dataset(data, out, params)
        inc_s = time.perf_counter() - started
        print(
            f"incremental clean (+{added} images): {len(incremental.processed)} decoded, "
            f"{len(incremental.records)} kept, {inc_s:.1f} s"
        )
        print(f"ratio incremental / full: {inc_s / full_s:.3f}")
    finally:
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
