"""A project-local Prefect server on 127.0.0.1, started and stopped by PID.

Without a server, Prefect starts a temporary one inside every process (tens of
seconds each here); one long-lived server makes every run fast and keeps the
history for the UI. Its database and logs live under <project>/.prefect.

The server's services (the scheduler above all) log their failures to
server.log and carry on: a scheduler that fails every loop creates no runs,
yet the deployment looks healthy in the UI. `server_errors` reads this
server's part of the log so that start and status can say so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from flows.project import Project
from tasks.files import write_text_atomic

HOST = "127.0.0.1"
LOG = "server.log"
_LOG_TAIL = 8 * 2**20  # read at most this much of a long-running server's log


@dataclass
class ServerInfo:
    pid: int
    host: str
    port: int
    log_offset: int = 0  # where this server's part of server.log starts

    @property
    def ui_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.ui_url}/api"


def _state_file(project: Project) -> Path:
    return project.prefect_home / "server.json"


def _alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped by the process that started it) is not alive."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def healthy(api_url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout) as resp:
            return resp.status == 200
    except OSError:
        return False


def recorded_server(project: Project) -> ServerInfo | None:
    """The server `.prefect/server.json` records, alive or not."""
    try:
        return ServerInfo(**json.loads(_state_file(project).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def running_server(project: Project) -> ServerInfo | None:
    """The project's server if its PID is alive and it answers /api/health."""
    info = recorded_server(project)
    if info is None:
        return None
    if _alive(info.pid) and healthy(info.api_url):
        return info
    return None


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


def _prefect_executable() -> str:
    beside = Path(sys.executable).with_name("prefect")
    return str(beside) if beside.exists() else shutil.which("prefect") or "prefect"


def start_server(project: Project, port: int = 4200, timeout: float = 180.0) -> ServerInfo:
    """Start (or reuse) the project's server and wait until it is healthy."""
    current = running_server(project)
    if current:
        return current
    project.prefect_home.mkdir(parents=True, exist_ok=True)
    port = free_port(port)
    env = {
        **os.environ,
        "PREFECT_HOME": str(project.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    log_path = project.prefect_home / LOG
    offset = log_path.stat().st_size if log_path.is_file() else 0
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [_prefect_executable(), "server", "start", "--host", HOST, "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    log.close()
    info = ServerInfo(pid=proc.pid, host=HOST, port=port, log_offset=offset)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the Prefect server exited with code {proc.returncode}: see {log_path}"
            )
        if healthy(info.api_url, timeout=1.0):
            write_text_atomic(_state_file(project), json.dumps(asdict(info)))
            return info
        time.sleep(0.5)
    _terminate(proc.pid)
    raise TimeoutError(f"the Prefect server did not become healthy within {timeout:.0f} s")


def _terminate(pid: int, grace: float = 15.0) -> None:
    """SIGTERM the server's process group, then SIGKILL what is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    return
            except ChildProcessError:
                if not _alive(pid):
                    return
            time.sleep(0.2)


def stop_server(project: Project) -> bool:
    """Stop the project's server; False if none was recorded."""
    state = _state_file(project)
    if not state.is_file():
        return False
    try:
        info = ServerInfo(**json.loads(state.read_text()))
    except (ValueError, TypeError):
        state.unlink()
        return False
    _terminate(info.pid)
    state.unlink(missing_ok=True)
    return True


@dataclass
class LoggedError:
    time: str
    source: str  # the service (docket task) or logger that logged it
    message: str  # the exception's last line, or the log message without a traceback


# Prefect's console format: "20:37:45.334 | ERROR   | docket.dependencies - message"
_RECORD = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| (\w+)\s*\| (\S+) - (.*)$")
_SERVICE = re.compile(r"(\w+)\(\)")  # docket names the failed service: "↩ [54ms] name(){…}"


def parse_log_errors(text: str) -> list[LoggedError]:
    """ERROR and CRITICAL records of a Prefect server log, each with its exception line."""
    errors: list[LoggedError] = []
    current: LoggedError | None = None
    after_frame = False  # the previous line was an indented traceback line
    for line in text.splitlines():
        record = _RECORD.match(line)
        if record:
            when, level, logger, message = record.groups()
            current = None
            if level in ("ERROR", "CRITICAL"):
                service = _SERVICE.search(message) if logger.startswith("docket") else None
                current = LoggedError(when, service.group(1) if service else logger, message)
                errors.append(current)
            after_frame = False
            continue
        if current is None or not line.strip():
            continue
        if line[0].isspace():
            after_frame = True
        elif after_frame:  # the exception line closing a traceback (the last one wins)
            current.message = line.strip()
            after_frame = False
    return errors


def server_errors(project: Project, info: ServerInfo | None = None) -> list[LoggedError]:
    """Errors the project's server (the running one, or `info`) has logged since it started."""
    info = info or running_server(project)
    path = project.prefect_home / LOG
    if info is None or not path.is_file():
        return []
    size = path.stat().st_size
    start = max(info.log_offset, size - _LOG_TAIL)
    with path.open("rb") as fh:
        fh.seek(start)
        text = fh.read().decode("utf-8", errors="replace")
    return parse_log_errors(text)


def describe_errors(errors: list[LoggedError], log_path: Path) -> str | None:
    """One line for the user: how many errors, the last one, and what it means."""
    if not errors:
        return None
    last = errors[-1]
    kinds = len({(e.source, e.message) for e in errors})
    scheduler = any("schedul" in e.source for e in errors)
    hint = "; the scheduler failed, so scheduled runs may be missing" if scheduler else ""
    return (
        f"the Prefect server logged {len(errors)} error(s) of {kinds} kind(s) since it started"
        f"{hint}; last at {last.time} in {last.source}: {last.message} (see {log_path})"
    )
