"""One lock per project, taken by every command that writes it.

Two commands writing one project at once corrupt each other's work (two `visiontune run`s
ended in DVC's LockError and six tracebacks; a `collect` during a run rewrites `data/` while
clean reads it). The lock is an `flock` on `.dvc/tmp/visiontune.lock`: the kernel releases it
when its process dies, even by `kill -9`, so a lock left by a killed command is never waited
on. The file names its holder (PID, command, start time) for the line a waiting command
prints.

It is re-entrant: within the process that holds it (a CLI command and the flows it runs), and
in that process's children (`dvc repro`'s stage commands, torchrun's ranks), which find the
holder among their ancestors through an environment variable.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.project import Project

ENV = "VISIONTUNE_LOCK_HOLDER"  # "<pid>:<lock path>", set while this process holds the lock
_held: dict[Path, int] = {}  # lock path → nesting depth in this process


@dataclass
class Holder:
    pid: int
    command: str
    started: str  # ISO time, local

    def describe(self) -> str:
        since = self.started.split("T")[-1].split(".")[0]
        return f"PID {self.pid} ({self.command}, since {since})"


class ProjectLocked(RuntimeError):
    """The project is locked by another command and the caller would not wait."""

    def __init__(self, holder: Holder | None) -> None:
        self.holder = holder
        super().__init__(
            f"the project is locked by {holder.describe() if holder else 'another command'}"
        )


def lock_path(project: Project) -> Path:
    base = project.root / ".dvc"
    folder = base / "tmp" if base.is_dir() else project.prefect_home
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "visiontune.lock"


def read_holder(path: Path) -> Holder | None:
    try:
        return Holder(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None  # gone, or not yet written by a holder that has just locked it


def _inherited(path: Path) -> bool:
    """True when an ancestor of this process holds the lock (its env var says so)."""
    import psutil

    pid, _, held = os.environ.get(ENV, "").partition(":")
    if held != str(path) or not pid.isdigit():
        return False
    with contextlib.suppress(psutil.Error):
        return int(pid) in {p.pid for p in psutil.Process().parents()}
    return False


def _worker_rank() -> bool:
    """True in a torchrun worker of global rank > 0. Rank 0 holds the lock for the whole job;
    another node's ranks are not its children, and waiting for the lock there would deadlock
    rank 0, which waits for them at the rendezvous."""
    rank = os.environ.get("RANK", "0")
    return rank.isdigit() and int(rank) > 0


@contextlib.contextmanager
def project_lock(
    project: Project,
    command: str,
    wait: bool = True,
    on_wait: Callable[[str], None] | None = None,
    poll: float = 0.5,
) -> Iterator[None]:
    """Hold the project's lock for the block. Held by another process: with `wait`, call
    `on_wait(line naming the holder)` once and wait; without, raise ProjectLocked."""
    path = lock_path(project)
    if path in _held or _inherited(path) or _worker_rank():
        _held[path] = _held.get(path, 0) + 1
        try:
            yield
        finally:
            _held[path] -= 1
            if not _held[path]:
                del _held[path]
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = read_holder(path)
                if not wait:
                    raise ProjectLocked(holder) from None
                if not told and on_wait is not None:
                    who = holder.describe() if holder else "another command"
                    on_wait(f"waiting for the project lock, held by {who}")
                    told = True
                time.sleep(poll)
        holder = Holder(os.getpid(), command, datetime.datetime.now().isoformat())
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        _held[path] = 1
        previous = os.environ.get(ENV)
        os.environ[ENV] = f"{os.getpid()}:{path}"
        try:
            yield
        finally:
            del _held[path]
            if previous is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = previous
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock
