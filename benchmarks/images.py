"""Real synthetic photos for benchmarks: a shape on a noisy gradient, 5 classes, JPEG and PNG.

Every image decodes like a small photo and is never a near-duplicate of another,
so the clean stage keeps all of them.
"""

from __future__ import annotations

import random
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle", "cross", "ring")


def photo(kind: str, rng: random.Random, size: tuple[int, int] = (320, 240)) -> Image.Image:
    w, h = size
    base = np.linspace(rng.randint(0, 120), rng.randint(120, 255), w, dtype=np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (h, w, 3))
    pixels = np.clip(base[None, :, None] + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(img)
    r = rng.randint(min(w, h) // 8, min(w, h) * 3 // 8)
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


def _write(args: tuple[Path, int, int, int, tuple[int, int], bool]) -> None:
    folder, seed, start, stop, size, jpeg_only = args
    for i in range(start, stop):
        rng = random.Random(seed * 1_000_003 + i)
        kind = CLASSES[i % len(CLASSES)]
        ext = "jpg" if jpeg_only or i % 3 else "png"
        photo(kind, rng, size).save(folder / kind / f"{seed}_{i:06d}.{ext}", quality=90)


def generate(
    folder: Path,
    count: int,
    seed: int = 0,
    size: tuple[int, int] = (320, 240),
    jpeg_only: bool = False,
    workers: int = 2,
) -> None:
    """`count` images in folder/<class>/, the same files for the same (count, seed, size)."""
    for kind in CLASSES:
        (folder / kind).mkdir(parents=True, exist_ok=True)
    chunk = max(1, -(-count // (workers * 4)))
    jobs = [
        (folder, seed, start, min(count, start + chunk), size, jpeg_only)
        for start in range(0, count, chunk)
    ]
    if workers <= 1:
        for job in jobs:
            _write(job)
        return
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write, jobs))
