"""The clean stage's decode cache: one decoded result per content hash, and its pixels.

Decoding depends only on a file's bytes and a few params, so its result is
stored per sha256: one row of cache_index.parquet (size, mode, pHash or the
rejection reason) and, for a usable image, its resized pixels in a shard
(tasks/shards.py), both tagged with `cache_key`, a key of the params and code
that shaped them. Entries under another key are decoded again.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
import PIL
from PIL import Image

from params import CleanParams
from tasks import decode as decode_module
from tasks.decode import Decoded, RejectedImage, decode
from tasks.files import write_parquet
from tasks.shards import (
    Location,
    ShardReader,
    ShardWriter,
    plan_compaction,
    remove_unlisted,
    shard_dir,
    write_locations,
)

CACHE_INDEX = "cache_index.parquet"


@dataclass
class CacheEntry:
    """What decoding one content gave; `reason` is empty when the image is usable."""

    sha256: str
    key: str
    reason: str = ""
    detail: str = ""
    width: int = 0
    height: int = 0
    mode: str = ""
    phash: str = ""


def prepare(decoded: Decoded, max_side: int) -> Image.Image:
    """The cached version of an image: at most `max_side` on its longest side, never upscaled."""
    img = decoded.image
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return img


def cache_key(params: CleanParams) -> str:
    """Identifies everything that shapes a cache entry: the decode params, the code, the libs."""
    shaping = {
        "max_side": params.max_side,
        "background": list(params.background),
        "max_pixels": params.max_pixels,
        "pillow": PIL.__version__,
        "imagehash": imagehash.__version__,
        "formats": sorted(Image.registered_extensions()),  # e.g. HEIC once pillow-heif is there
        "code": inspect.getsource(decode_module) + inspect.getsource(prepare),
    }
    return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def process(
    raw: bytes, sha256: str, key: str, params: CleanParams
) -> tuple[CacheEntry, np.ndarray | None]:
    """Decode one content: its cache entry and, when usable, the pixels to cache (HWC uint8)."""
    try:
        decoded = decode(
            raw,
            tuple(params.background),  # type: ignore[arg-type]
            params.max_pixels,
            params.max_side,
        )
    except RejectedImage as exc:
        return CacheEntry(sha256, key, exc.reason, exc.detail), None
    width, height = decoded.size
    img = prepare(decoded, params.max_side)
    entry = CacheEntry(
        sha256, key, width=width, height=height, mode=decoded.mode, phash=str(imagehash.phash(img))
    )
    return entry, np.asarray(img)


def load_index(out_dir: Path, key: str) -> dict[str, CacheEntry]:
    """Cache entries made under `key`; anything else (other params or code) is recomputed."""
    path = out_dir / CACHE_INDEX
    if not path.is_file():
        return {}
    try:
        frame = pd.read_parquet(path)
    except Exception:  # an unreadable index is only a lost cache
        return {}
    if set(frame.columns) != {f.name for f in fields(CacheEntry)}:
        return {}
    frame = frame[frame["key"] == key]
    names = [f.name for f in fields(CacheEntry)]
    columns = [frame[name].tolist() for name in names]
    return {values[0]: CacheEntry(*values) for values in zip(*columns, strict=True)}


def save_index(index: dict[str, CacheEntry], out_dir: Path) -> None:
    entries = [index[sha] for sha in sorted(index)]
    names = [f.name for f in fields(CacheEntry)]  # by column: asdict per row took seconds
    frame = pd.DataFrame({name: [getattr(e, name) for e in entries] for name in names})
    write_parquet(frame.astype({"width": "int64", "height": "int64"}), out_dir / CACHE_INDEX)


def store_pixels(
    out_dir: Path,
    key: str,
    live: list[str],
    stored: dict[str, Location],
    writer: ShardWriter,
    shard_bytes: int,
) -> dict[str, Location]:
    """Locations of every live image after writing new shards and compacting old ones."""
    locations = {loc.sha256: loc for loc in writer.close()}
    locations.update((sha, stored[sha]) for sha in live if sha in stored)
    locations = {sha: locations[sha] for sha in live}
    rewrite = plan_compaction(locations, shard_bytes)
    if rewrite:
        reader = ShardReader(out_dir, locations.values())
        mover = ShardWriter(shard_dir(out_dir), shard_bytes)
        for sha in sorted(live, key=lambda s: (locations[s].shard, locations[s].offset)):
            if locations[sha].shard in rewrite:
                mover.add(sha, key, reader.image(sha))
        locations.update((loc.sha256, loc) for loc in mover.close())
    # the index names only shards that exist; old shards go only once it is replaced
    write_locations(out_dir, locations.values())
    remove_unlisted(out_dir, {loc.shard for loc in locations.values()})
    return locations
