"""Reap what a killed test session left behind: its Prefect servers, workers and temp folder.

conftest tags the test process's environment with the session's identity (PID and start
time); every process the tests start inherits the tag. pytest_sessionfinish stops the
servers it knows of, but a pytest killed with SIGKILL runs no hook, and its servers (in
sessions of their own) would run for ever. So each session starts by killing every process
of this user whose tag names a session that no longer runs, and removing its temp folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import psutil

TAG = "VISIONTUNE_TEST_SESSION"
PREFIX = "visiontune-tests-"
OWNER = "session"  # the file in a session's temp folder that names the session


def session_tag(pid: int | None = None) -> str:
    """`pid:start time`: a PID alone could be reused by an unrelated process."""
    proc = psutil.Process(pid)
    return f"{proc.pid}:{proc.create_time():.2f}"


def session_alive(tag: str) -> bool:
    pid, _, created = tag.partition(":")
    try:
        return session_tag(int(pid)) == f"{pid}:{created}"
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _orphans() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        if proc.pid == os.getpid():
            continue
        try:
            tag = proc.environ().get(TAG)
        except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess, OSError):
            continue
        if tag and not session_alive(tag):
            found.append(proc)
    return found


def reap_orphans(grace: float = 15.0) -> list[int]:
    """SIGTERM (then SIGKILL) the processes of dead sessions; remove their temp folders.

    Returns the PIDs that were stopped.
    """
    victims = _orphans()
    for proc in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(victims, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)
    for owner in Path(tempfile.gettempdir()).glob(f"{PREFIX}*/{OWNER}"):
        try:
            tag = owner.read_text().strip()
        except OSError:
            continue
        if not session_alive(tag):
            shutil.rmtree(owner.parent, ignore_errors=True)
    return [p.pid for p in victims]
