"""Notice a Prefect server that dies under a running command, within a bounded time.

Prefect's client retries a refused call with exponential backoff, and each part of a flow
run (its state, its logs, every subflow) retries on its own: a run whose server was killed
went on for minutes and ended in a pile of tracebacks. A daemon thread instead polls the
API's /health and calls `on_dead` once the server is gone: at once (two polls) when the
project's own server process has exited, after `grace` seconds of failed polls otherwise
(a remote server, or one too busy to answer, is given time).

Ending the process there is safe by design: every write is atomic, every finished stage is
already recorded in dvc.lock, training resumes from its last checkpoint and a search from
its study, exactly as after `kill -9`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from flows.project import Project
from flows.project.server import _alive as server_alive
from flows.project.server import recorded_server

_started: set[str] = set()


def server_pid(project: Project, api_url: str) -> int | None:
    """The PID of the project's own server when `api_url` is that server's."""
    info = recorded_server(project)
    return info.pid if info and info.api_url == api_url.rstrip("/") else None


def watch(
    project: Project,
    api_url: str,
    on_dead: Callable[[str, float], None],
    interval: float = 2.0,
    grace: float = 60.0,
) -> threading.Thread | None:
    """Start watching `api_url` (once per URL and process) if it answers now; `on_dead(url,
    seconds it has been unreachable)` runs in the watcher's thread."""
    from flows.project.server import healthy

    if api_url in _started or not healthy(api_url, timeout=5.0):
        return None
    _started.add(api_url)
    pid = server_pid(project, api_url)

    def loop() -> None:
        failing_since: float | None = None
        misses = 0
        while True:
            time.sleep(interval)
            if healthy(api_url, timeout=5.0):
                failing_since, misses = None, 0
                continue
            now = time.monotonic()
            failing_since = failing_since or now
            misses += 1
            gone = pid is not None and not server_alive(pid) and misses >= 2
            if gone or now - failing_since >= grace:
                on_dead(api_url, now - failing_since + interval)
                return

    thread = threading.Thread(target=loop, name="prefect-server-watchdog", daemon=True)
    thread.start()
    return thread
