"""Small real images for tests: coloured shapes, one shape per class, plus broken files."""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def shape_image(kind: str, rng: random.Random, size: int = 48) -> Image.Image:
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    fg = tuple(rng.randint(0, 120) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.randint(size // 4, size // 2 - 2)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return img


def write_image_folder(
    root: Path, per_class: int = 16, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> list[Path]:
    """An ImageFolder tree root/<class>/<n>.png|jpg of distinguishable shapes."""
    rng = random.Random(seed)
    paths = []
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = shape_image(kind, rng)
            ext = "png" if i % 2 else "jpg"
            path = root / kind / f"{kind}_{seed}_{i:03d}.{ext}"
            img.save(path)
            paths.append(path)
    return paths


def truncated_png(path: Path) -> Path:
    """A PNG cut in half: opens (header is fine) but fails to fully decode."""
    img = shape_image("circle", random.Random(99), size=64)
    img.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path
