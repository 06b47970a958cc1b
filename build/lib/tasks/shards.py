"""The training cache's storage: decoded images as raw uint8 in a few content-addressed shards.

Each shard is one `.npy` file holding a flat uint8 array: the HWC pixels of
thousands of images back to back (up to `SHARD_BYTES`), named by the sha256 of
the file. `shards/index.parquet` maps each image (content hash + decode key)
to its shard, byte offset, shape and crc32, and records every shard's sha256
and size. Why raw uint8 and not PNG/JPEG bytes: reading an image is a slice of
a memory map (no decode in the training loop, ~25× faster than PNG at 128 px)
and exact (JPEG would make prediction decode differently from training); the
price is ~1.9× the bytes of PNG (README, "The pipeline").

Shards are written once and never modified: new images go to new shards,
deleted ones leave garbage that `plan_compaction` rewrites away once a shard's
share of dead bytes passes `GARBAGE`, and small shards (one per incremental
run) are merged once there are more than `MAX_SMALL`. Every write is atomic
(temp + rename) and the index is replaced only after the shards it names
exist, so a crash leaves the old, consistent state plus orphans that the next
run deletes.

Trust: the clean stage verifies each shard's sha256 before using it (or, with a
checks file, each shard changed since it was last verified on this machine) and
drops a truncated or corrupted shard (its images are decoded again from
data/); readers check each shard's size when they open it and each image's
crc32 when they read it, and raise ShardError instead of returning bad pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.files import write_parquet

SHARDS = "shards"
INDEX = "index.parquet"
SHARD_BYTES = 256 << 20  # a shard closes once it holds this many pixel bytes
GARBAGE = 0.25  # a shard whose dead bytes pass this share is rewritten
MAX_SMALL = 4  # more shards than this under half SHARD_BYTES are merged
SUFFIX = ".npy"
RACY_NS = 2_000_000_000  # a shard modified this recently is not trusted by its stat alone


class ShardError(RuntimeError):
    """A shard or image failed its checksum or size check: never use its pixels."""


@dataclass
class Location:
    sha256: str  # the raw file's content hash
    key: str  # the decode key (tasks.clean_cache.cache_key) that produced the pixels
    shard: str  # file name under shards/
    offset: int  # byte offset of the first pixel in the shard's flat array
    height: int
    width: int
    crc32: int  # of the image's bytes
    shard_sha256: str  # of the whole shard file
    shard_bytes: int  # size of the whole shard file

    @property
    def nbytes(self) -> int:
        return self.height * self.width * 3


COLUMNS = [f.name for f in fields(Location)]


def shard_dir(clean_dir: Path) -> Path:
    return clean_dir / SHARDS


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_shard(folder: Path, images: list[tuple[str, str, np.ndarray]]) -> list[Location]:
    """One shard holding `images` (sha256, key, HWC uint8) in order; atomic, named by its hash."""
    folder.mkdir(parents=True, exist_ok=True)
    parts, offsets, offset = [], [], 0
    for _, _, array in images:
        flat = np.ascontiguousarray(array, dtype=np.uint8).reshape(-1)
        parts.append(flat)
        offsets.append(offset)
        offset += flat.size
    fd, tmp_name = tempfile.mkstemp(prefix=".incoming.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            # a 1-D uint8 .npy written part by part: no second copy of the shard in memory
            header = {"descr": "|u1", "fortran_order": False, "shape": (offset,)}
            np.lib.format.write_array_header_1_0(fh, header)
            for part in parts:
                fh.write(part.data)
            fh.flush()
            os.fsync(fh.fileno())
        sha, size = file_sha256(tmp), tmp.stat().st_size
        name = f"{sha[:24]}{SUFFIX}"  # content-addressed: the same images, the same file
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    return [
        Location(
            sha256=s,
            key=k,
            shard=name,
            offset=off,
            height=int(a.shape[0]),
            width=int(a.shape[1]),
            crc32=zlib.crc32(part),
            shard_sha256=sha,
            shard_bytes=size,
        )
        for (s, k, a), off, part in zip(images, offsets, parts, strict=True)
    ]


class ShardWriter:
    """Collects images and writes a shard each time `shard_bytes` of pixels are pending."""

    def __init__(self, folder: Path, shard_bytes: int = SHARD_BYTES) -> None:
        self.folder, self.shard_bytes = folder, shard_bytes
        self.pending: list[tuple[str, str, np.ndarray]] = []
        self.pending_bytes = 0
        self.written: list[Location] = []

    def add(self, sha256: str, key: str, array: np.ndarray) -> None:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
            raise ValueError(f"expected an HWC uint8 RGB array, got {array.dtype} {array.shape}")
        self.pending.append((sha256, key, array))
        self.pending_bytes += array.nbytes
        if self.pending_bytes >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.written.extend(write_shard(self.folder, self.pending))
        self.pending, self.pending_bytes = [], 0

    def close(self) -> list[Location]:
        self.flush()
        return self.written


def read_locations(clean_dir: Path) -> list[Location]:
    """The index's rows; an unreadable or foreign index is an empty cache, not an error."""
    path = shard_dir(clean_dir) / INDEX
    if not path.is_file():
        return []
    try:
        frame = pd.read_parquet(path)
    except Exception:
        return []
    if list(frame.columns) != COLUMNS:
        return []
    columns = [frame[name].tolist() for name in COLUMNS]
    return [Location(*values) for values in zip(*columns, strict=True)]


def write_locations(clean_dir: Path, locations: Iterable[Location]) -> None:
    rows = sorted(locations, key=lambda loc: loc.sha256)
    frame = pd.DataFrame([[getattr(r, c) for c in COLUMNS] for r in rows], columns=COLUMNS)
    types = {"offset": "int64", "height": "int64", "width": "int64", "crc32": "int64"}
    write_parquet(frame.astype(types | {"shard_bytes": "int64"}), shard_dir(clean_dir) / INDEX)


def _stat_key(path: Path) -> list[int] | None:
    """[size, mtime_ns, inode] of a regular file; None when there is none."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ino] if stat.S_ISREG(st.st_mode) else None


def load_checks(path: Path | None) -> dict[str, list]:
    """{shard: [size, mtime_ns, inode, sha256]} of shards verified earlier on this machine."""
    if path is None or not path.is_file():
        return {}
    try:
        checks = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # only costs a re-hash
    return checks if isinstance(checks, dict) else {}


def save_checks(path: Path | None, clean_dir: Path, locations: Iterable[Location]) -> None:
    """Record the stat of every shard the index names (each was verified or written by this
    run), so the next run hashes only shards that changed since."""
    if path is None:
        return
    folder, checks = shard_dir(clean_dir), {}
    racy = time.time_ns() - RACY_NS
    for name, sha in {(loc.shard, loc.shard_sha256) for loc in locations}:
        key = _stat_key(folder / name)
        # a write in the same clock tick as this one would keep the same mtime: such a
        # shard is not recorded, so the next run hashes it (git's "racy" entries)
        if key is not None and key[1] < racy:
            checks[name] = [*key, sha]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".checks.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(checks, fh)
    os.replace(tmp, path)


def verified_locations(
    clean_dir: Path, key: str, checks: dict[str, list] | None = None
) -> tuple[dict[str, Location], list[str]]:
    """Index rows of `key` whose shard passes its size and sha256 check, and the shards
    that failed (their images count as not cached, so the caller decodes them again).

    `checks` (load_checks): a shard whose size, mtime and inode are what they were when
    it was last verified on this machine is trusted without reading it, as git and DVC
    trust unchanged stats; any write to it (a killed run, an edit) changes its mtime and
    it is hashed again. Readers still check every image's crc32 as they read it.
    """
    folder = shard_dir(clean_dir)
    checks = checks or {}
    by_shard: dict[str, list[Location]] = {}
    for loc in read_locations(clean_dir):
        by_shard.setdefault(loc.shard, []).append(loc)
    good: dict[str, Location] = {}
    bad: list[str] = []
    for name, locs in sorted(by_shard.items()):
        path = folder / name
        expected = locs[0].shard_sha256
        stat_key = _stat_key(path)
        ok = stat_key is not None and stat_key[0] == locs[0].shard_bytes
        if ok and checks.get(name) != [*stat_key, expected]:  # type: ignore[misc]
            ok = file_sha256(path) == expected
        if not ok:
            bad.append(name)
            continue
        good.update((loc.sha256, loc) for loc in locs if loc.key == key)
    return good, bad


def plan_compaction(
    live: dict[str, Location],
    shard_bytes: int = SHARD_BYTES,
    garbage: float = GARBAGE,
    max_small: int = MAX_SMALL,
) -> set[str]:
    """The shards to rewrite: too much dead space, or too many small shards."""
    used: dict[str, int] = {}
    size: dict[str, int] = {}
    for loc in live.values():
        used[loc.shard] = used.get(loc.shard, 0) + loc.nbytes
        size[loc.shard] = loc.shard_bytes
    rewrite = {name for name in used if 1 - used[name] / size[name] > garbage}
    small = [name for name in used if name not in rewrite and used[name] < shard_bytes / 2]
    if len(small) > max_small:
        rewrite.update(small)
    return rewrite


def remove_unlisted(clean_dir: Path, listed: set[str]) -> None:
    """Delete shard files the index no longer names (garbage, a crashed run's leftovers)."""
    folder = shard_dir(clean_dir)
    if not folder.is_dir():
        return
    for entry in os.scandir(folder):
        if entry.name != INDEX and entry.name not in listed:
            os.unlink(entry.path)


class ShardReader:
    """Random access to cached images by content hash; checks sizes and crc32s as it reads.

    Memory maps are opened lazily and dropped on pickling, so each DataLoader
    worker maps the shards itself.
    """

    def __init__(self, clean_dir: Path, locations: Iterable[Location] | None = None) -> None:
        self.folder = shard_dir(clean_dir)
        rows = read_locations(clean_dir) if locations is None else locations
        self.locations = {loc.sha256: loc for loc in rows}
        self._maps: dict[str, np.ndarray] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": {}}

    def __contains__(self, sha256: str) -> bool:
        return sha256 in self.locations

    def location(self, sha256: str) -> Location:
        try:
            return self.locations[sha256]
        except KeyError:
            raise ShardError(
                f"{self.folder} holds no image {sha256[:12]}…: rerun the clean stage"
            ) from None

    def _map(self, loc: Location) -> np.ndarray:
        mapped = self._maps.get(loc.shard)
        if mapped is None:
            path = self.folder / loc.shard
            if not path.is_file() or path.stat().st_size != loc.shard_bytes:
                raise ShardError(f"{path} is missing or truncated: rerun the clean stage")
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            self._maps[loc.shard] = mapped
        return mapped

    def image(self, sha256: str) -> np.ndarray:
        """The cached HWC uint8 image (a private copy)."""
        loc = self.location(sha256)
        flat = self._map(loc)[loc.offset : loc.offset + loc.nbytes]
        if flat.size != loc.nbytes or zlib.crc32(flat) != loc.crc32:
            raise ShardError(
                f"{self.folder / loc.shard}: image {sha256[:12]}… fails its checksum "
                "(corrupted shard): rerun the clean stage to rebuild it"
            )
        return np.array(flat).reshape(loc.height, loc.width, 3)

    def images(self, shas: Iterable[str]) -> Iterator[np.ndarray]:
        for sha in shas:
            yield self.image(sha)
