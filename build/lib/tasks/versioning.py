"""Git and DVC bookkeeping for retraining: what version is this, commit, tag, push."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml


def data_version(root: Path) -> str | None:
    """The dataset hash recorded in data.dvc (None before the first `dvc add data`)."""
    dvc_file = root / "data.dvc"
    if not dvc_file.is_file():
        return None
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout.strip()


def git_head(root: Path) -> str | None:
    try:
        return _git(root, "rev-parse", "HEAD")
    except RuntimeError:
        return None


def commit_and_tag(root: Path, paths: list[str], message: str, tag: str | None) -> str:
    """Commit the given files (those that exist) and tag the commit; returns its hash."""
    existing = [p for p in paths if (root / p).exists()]
    _git(root, "add", "--", *existing)
    if _git(root, "status", "--porcelain", "--", *existing):
        _git(root, "commit", "-m", message, "--", *existing)
    if tag:
        _git(root, "tag", "-f", tag)
    return _git(root, "rev-parse", "HEAD")


def dvc_track(root: Path, path: str) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.add(path)


def dvc_push(root: Path) -> None:
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.push()
