"""Safe file I/O: atomic writes (temp file + fsync + rename), so a crash never leaves a
half-written file, and reads of untrusted paths that never block, never follow a name into
a FIFO or a device, and never read more than they may."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING

import yaml

if TYPE_CHECKING:  # pandas costs ~0.5 s to import; only the table writers need it
    import pandas as pd


CHUNK = 1 << 20
KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


class FileRefused(Exception):
    """A path that is not read: `reason` is one word of the README's tables."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def printable(text: str) -> str:
    """`text` as valid UTF-8, for CSV, parquet, JSON and the terminal.

    Python keeps the bytes of a file name that are not UTF-8 as lone surrogates
    ('caf\\udce9'), which no encoder accepts; they become backslash escapes ('caf\\xe9').
    """
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produced
        return text.encode("utf-8", "backslashreplace").decode()
    return raw.decode("utf-8", "backslashreplace")


def regular_size(path: Path, max_bytes: int | None = None) -> int:
    """The size of the regular file at `path` (links followed), from stat alone, or FileRefused.

    Nothing is opened: a FIFO would block its reader forever, a device may never end.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileRefused("missing", "no such file (or a symlink to nothing)") from None
    except OSError as exc:  # a symlink loop (ELOOP), permission denied, an I/O error
        raise FileRefused("unreadable", f"cannot stat it: {exc.strerror}") from None
    return _checked(st, max_bytes)


def _checked(st: os.stat_result, max_bytes: int | None) -> int:
    if not stat.S_ISREG(st.st_mode):
        kind = KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise FileRefused("not_a_file", kind)
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileRefused("too_large", f"{st.st_size} bytes > the limit of {max_bytes}")
    return st.st_size


@contextmanager
def open_regular(
    path: Path, max_bytes: int | None = None, follow_symlinks: bool = True
) -> Iterator[tuple[IO[bytes], int]]:
    """(file, size) of a regular file opened for reading, or FileRefused.

    Checked by stat before opening, then opened non-blocking and checked again on
    the open file, so a path swapped for a FIFO in between is refused, not waited on.
    """
    regular_size(path, max_bytes)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileRefused("missing", "it disappeared while it was being read") from None
    except OSError as exc:
        raise FileRefused("unreadable", f"cannot open it: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        size = _checked(os.fstat(fd), max_bytes)
        yield fh, size


def read_limited(src: IO[bytes], max_bytes: int | None, into: IO[bytes] | None = None) -> str:
    """sha256 of what `src` holds from here on, streamed (copied to `into` if given).

    A file that grows past `max_bytes` while it is read is refused as too_large.
    """
    digest, size = hashlib.sha256(), 0
    while chunk := src.read(CHUNK):
        size += len(chunk)
        if max_bytes is not None and size > max_bytes:
            raise FileRefused("too_large", f"grew past the limit of {max_bytes} bytes while read")
        digest.update(chunk)
        if into is not None:
            into.write(chunk)
    return digest.hexdigest()


@contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """Yield a temp path beside `dest`; it replaces `dest` only if the block succeeds."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, dest)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_bytes_atomic(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(dest: Path, text: str) -> None:
    write_bytes_atomic(dest, text.encode())


def fresh_dir(folder: Path, keep: tuple[str, ...] = ()) -> Path:
    """Start a stage's output folder empty, as `dvc repro` does, so nothing stale is kept;
    the entries named in `keep` (a persistent cache, a study) survive."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        if path.name not in keep:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    return folder


def write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_yaml(data: dict, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def write_json(data: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
