"""The recipe benchmark's datasets: real labelled images that install offline, of different kinds.

Each builder writes an ImageFolder tree (label/file.png) once into the cache
(~/.cache/visiontune/recipe/<name>/) and returns it:

- demo: the demo set, Google's emoji by category (5 coarse classes, colour icons);
- apple-subcategory: Apple's emoji by subcategory (31 fine-grained, imbalanced classes);
- digits: sklearn's handwritten digits, 8×8 grey upscaled (10 classes, far from ImageNet);
- photo-tiles: non-overlapping tiles of scikit-image's sample photographs, labelled by the
  photograph (14 classes of real camera, microscope and telescope images, 8 of them grey).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.npm import cache_dir, npm_pack
from tasks.sources import DEMO_CLASSES, DEMO_VERSION, safe_label


def _emoji(artist: str, key: str, classes: tuple[str, ...] | None, least: int, most: int):
    def build(out: Path) -> None:
        package = f"emoji-datasource-{artist}"
        tarball = npm_pack(package, DEMO_VERSION, cache_dir() / "npm")
        with tarfile.open(tarball) as tar:
            emojis = json.load(tar.extractfile("package/emoji.json"))  # type: ignore[arg-type]
            by_label: dict[str, list[str]] = {}
            for e in sorted(emojis, key=lambda e: e["sort_order"]):
                if e.get(f"has_img_{artist}") and (classes is None or e[key] in classes):
                    by_label.setdefault(e[key], []).append(e["image"])
            for label, images in by_label.items():
                if len(images) < least:
                    continue
                folder = out / safe_label(label)
                folder.mkdir(parents=True)
                for name in images[:most]:
                    member = tar.extractfile(f"package/img/{artist}/64/{name}")
                    (folder / name).write_bytes(member.read())  # type: ignore[union-attr]

    return build


def _digits(out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray((255 - pixels * 255 / 16).astype(np.uint8))  # dark ink, white paper
        folder = out / str(target)
        folder.mkdir(exist_ok=True)
        grey.resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")


# scikit-image's bundled photographs (no download); synthetic and duplicate images left out
PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "rocket",
)  # fmt: skip
TILE = 32  # px of the photograph (downscaled to ≤ 480 px first), no overlap
TILES_PER_PHOTO = 80


def _photo_tiles(out: Path) -> None:
    import skimage.data

    rng = np.random.default_rng(0)
    for name in PHOTOS:
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
        image.thumbnail((480, 480))
        width, height = image.size
        spots = [
            (x, y)
            for x in range(0, width - TILE + 1, TILE)
            for y in range(0, height - TILE + 1, TILE)
        ]
        folder = out / name
        folder.mkdir()
        for k in rng.permutation(len(spots))[:TILES_PER_PHOTO]:
            x, y = spots[k]
            image.crop((x, y, x + TILE, y + TILE)).save(folder / f"{x:03d}-{y:03d}.png")


DATASETS: dict[str, Callable[[Path], None]] = {
    "demo": _emoji("google", "category", DEMO_CLASSES, 1, 120),
    "apple-subcategory": _emoji("apple", "subcategory", None, 20, 60),
    "digits": _digits,
    "photo-tiles": _photo_tiles,
}


def dataset(name: str) -> Path:
    """The ImageFolder tree of dataset `name`, built on first use."""
    out = cache_dir() / "recipe" / name
    if not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        DATASETS[name](tmp)
        tmp.rename(out)
    return out
