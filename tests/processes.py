"""Real child processes for the kill -9 tests: start one in its own session, SIGKILL it on cue."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.project import env


def start(*args: str, cwd: Path, stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
    """`args` (e.g. the visiontune console script) in a new session, so killpg gets every child.

    With `stdout=subprocess.PIPE`, its output is text lines (e.g. to wait for a cue)."""
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=env(),
        stdout=stdout,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        text=True,
    )


def kill_when(
    proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300
) -> None:
    """Poll `ready` until it holds, then SIGKILL the process group.

    Fails if the process ends first or `ready` does not hold within `timeout` seconds; the
    process is killed and reaped in every case.
    """
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert proc.poll() is None, f"the process ended before {what}"
            assert time.monotonic() < deadline, f"not {what} within {timeout} s"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):  # already gone if it ended by itself
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def start_visiontune(root: Path, *args: str) -> subprocess.Popen:
    """`visiontune ARGS` in `root`, its own session, stdout and stderr piped as text."""
    return subprocess.Popen(
        ["visiontune", *args],
        cwd=root,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
