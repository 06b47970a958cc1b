"""Decode every raw image for real, normalise it, and write the resized, content-addressed cache.

A file that cannot be used is recorded in rejected.csv with a reason; the run goes on.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from prefect import task
from prefect.cache_policies import NO_CACHE
from rich.progress import track

from params import CleanParams
from tasks.files import write_bytes_atomic, write_csv, write_parquet


@dataclass
class CleanRecord:
    path: str  # relative to data/, posix
    label: str
    sha256: str
    bytes: int
    width: int
    height: int
    cache: str  # relative to the clean stage's folder
    phash: str


@dataclass
class Rejection:
    path: str
    reason: str
    detail: str


class RejectedImage(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def list_raw_images(data_dir: Path) -> list[tuple[str, str]]:
    """(relative path, label) for every file under data/<label>/, sorted for determinism."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir} does not exist: run `visiontune collect` first")
    found = []
    for path in sorted(data_dir.rglob("*")):
        rel = path.relative_to(data_dir)
        if path.is_file() and len(rel.parts) >= 2 and not any(p.startswith(".") for p in rel.parts):
            found.append((rel.as_posix(), rel.parts[0]))
    return found


def decode(raw: bytes, params: CleanParams) -> Image.Image:
    """Fully decode, apply EXIF orientation and return an RGB image (alpha composited)."""
    if not raw:
        raise RejectedImage("empty", "zero-byte file")
    Image.MAX_IMAGE_PIXELS = params.max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            img.load()
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RejectedImage("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise RejectedImage("not_an_image", "Pillow cannot identify the format") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise RejectedImage("corrupt", str(exc)) from exc
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, params.background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        img = canvas
    elif img.mode == "I;16" or img.mode == "I":
        img = img.point(lambda v: v / 256).convert("L").convert("RGB")
    else:
        img = img.convert("RGB")
    if min(img.size) < params.min_side:
        raise RejectedImage("too_small", f"{img.width}x{img.height} < {params.min_side}px")
    return img


def clean_one(raw: bytes, params: CleanParams) -> tuple[Image.Image, tuple[int, int]]:
    img = decode(raw, params)
    size = img.size
    if max(size) > params.max_side:
        img.thumbnail((params.max_side, params.max_side), Image.Resampling.LANCZOS)
    return img, size


@task(name="clean-images", cache_policy=NO_CACHE)
def clean_images(
    data_dir: Path, out_dir: Path, params: CleanParams
) -> tuple[list[CleanRecord], list[Rejection]]:
    """Clean every raw image; exact duplicates (same sha256) keep the first path in sort order."""
    import imagehash

    records: list[CleanRecord] = []
    rejected: list[Rejection] = []
    seen: dict[str, str] = {}
    images_dir = out_dir / "images"
    for rel, label in track(list_raw_images(data_dir), description="clean"):
        raw = (data_dir / rel).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest in seen:
            rejected.append(Rejection(rel, "duplicate", f"same bytes as {seen[digest]}"))
            continue
        try:
            img, (width, height) = clean_one(raw, params)
        except RejectedImage as exc:
            rejected.append(Rejection(rel, exc.reason, exc.detail))
            continue
        seen[digest] = rel
        cache_rel = f"images/{digest[:2]}/{digest}.png"
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        write_bytes_atomic(images_dir.parent / cache_rel, buf.getvalue())
        records.append(
            CleanRecord(
                path=rel,
                label=label,
                sha256=digest,
                bytes=len(raw),
                width=width,
                height=height,
                cache=cache_rel,
                phash=str(imagehash.phash(img)),
            )
        )
    return records, rejected


@task(name="write-manifest", cache_policy=NO_CACHE)
def write_manifest(
    records: list[CleanRecord], rejected: list[Rejection], out_dir: Path
) -> pd.DataFrame:
    manifest = pd.DataFrame([asdict(r) for r in records], columns=list(CleanRecord.__annotations__))
    write_parquet(manifest, out_dir / "manifest.parquet")
    rejections = pd.DataFrame([asdict(r) for r in rejected], columns=["path", "reason", "detail"])
    write_csv(rejections, out_dir / "rejected.csv")
    return manifest
