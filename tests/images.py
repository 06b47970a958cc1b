"""Small real images for tests: coloured shapes, one shape per class, plus broken files."""

from __future__ import annotations

import io
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


def image_bytes(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def rotated_jpeg_bytes() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90°': upright it is 20x40."""
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    return image_bytes(img, "JPEG", exif=exif)


def write_bad_corpus(data: Path) -> dict[str, str]:
    """One file per clean rejection reason under data/<label>/; {data-relative path: reason}.

    Meant for CleanParams(max_pixels=200_000, classes=CLASSES, near_duplicates="keep_one");
    the thresholds in comments are those params and the defaults.
    """
    rng = random.Random(5)
    files: dict[str, tuple[bytes, str]] = {
        "circle/empty.png": (b"", "empty"),
        "circle/notes.txt": (b"just some text, not pixels\n", "not_an_image"),
        "circle/tiny.png": (image_bytes(Image.new("RGB", (4, 4))), "too_small"),
        "circle/banner.png": (image_bytes(Image.new("RGB", (220, 10), "red")), "aspect_ratio"),
        # 500x500 = 250k pixels > max_pixels 200k: refused from the header, never decoded
        "square/bomb.png": (image_bytes(Image.new("1", (500, 500))), "decompression_bomb"),
        # 32-bit float pixels have no defined RGB rendering
        "square/float.tif": (
            image_bytes(Image.new("F", (30, 30), 0.5), "TIFF"),
            "unsupported_mode",
        ),
        "other/stray.png": (image_bytes(shape_image("circle", rng)), "label_not_allowed"),
    }
    full = image_bytes(shape_image("circle", rng, size=64))
    files["circle/truncated.png"] = (full[: len(full) // 2], "corrupt")
    original = shape_image("square", rng, size=64)
    files["square/a_original.png"] = (image_bytes(original), "")
    files["square/b_copy.png"] = (image_bytes(original), "duplicate")
    # re-encoded as a high-quality JPEG: other bytes, same look
    files["square/c_reencoded.jpg"] = (image_bytes(original, "JPEG", quality=95), "near_duplicate")
    conflict = image_bytes(shape_image("triangle", rng))
    files["triangle/conflict.png"] = (conflict, "label_conflict")
    files["circle/conflict.png"] = (conflict, "label_conflict")
    for rel, (data_bytes, _) in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(data_bytes)
    return {rel: reason for rel, (_, reason) in files.items() if reason}


def write_convertible_modes(data: Path) -> dict[str, str]:
    """Images in modes clean converts to RGB; {data-relative path: original mode}."""
    lum = Image.linear_gradient("L").resize((32, 32))
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    sixteen = Image.new("I;16", (32, 32))
    sixteen.paste(32896, (0, 0, 32, 32))  # 0x8080: 128 in 8 bits; Pillow alone clips to 255
    files = {
        "square/cmyk.jpg": (Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", {}),
        "square/palette_transparent.png": (palette, "PNG", {"transparency": 1}),
        "square/la.png": (Image.merge("LA", (lum, Image.new("L", (32, 32), 0))), "PNG", {}),
        "square/sixteen.png": (sixteen, "PNG", {}),
        "square/rgba.png": (Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG", {}),
    }
    modes = {}
    for rel, (img, fmt, save) in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(image_bytes(img, fmt, **save))
        modes[rel] = img.mode
    return modes


def write_cache(clean_dir: Path, images: dict[str, Image.Image]) -> None:
    """A clean-stage cache holding `images` by content hash (as the clean stage writes it)."""
    import numpy as np

    from tasks.shards import ShardWriter, shard_dir, write_locations

    writer = ShardWriter(shard_dir(clean_dir))
    for sha, img in images.items():
        writer.add(sha, "test", np.asarray(img.convert("RGB")))
    write_locations(clean_dir, writer.close())
