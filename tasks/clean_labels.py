"""What the clean stage does differently for multi-label data: everything kind-specific is here.

Single-label data is data/<label>/<file>: a file's label is its folder. Multi-label data
(data/task.json says `multi_label`) is data/_images/<file>, each file's set in
data/sources.csv. The rules (tasks/clean_rules.py) run the same on one label string per file:
for multi-label data it is the canonical set string (tasks/multilabel.py), so the same bytes
with two sets is a label_conflict and the same set twice a duplicate. The manifest then has
`labels` and `original_labels` instead of `label` and `original_label`.

`label_kind(data_dir)` picks the kind; nothing else in the stage asks which it is.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.files import printable
from tasks.multilabel import join_set, split_set
from tasks.sources import IMAGES_FOLDER, MULTI_LABEL, SINGLE_LABEL, SOURCES_FILE, data_task

# a file rejected before any rule: (path, reason, detail)
Problem = tuple[str, str, str]
RARE_LABEL = 10  # multi-label: a label on fewer kept images than this is warned about
# the reasons only multi-label data can give (tasks/clean_rules.py REASONS has the others)
MULTI_LABEL_REASONS = {
    "no_label": "multi-label data: no row in data/sources.csv, an empty set (collected "
    "without --allow-empty), or a file outside data/_images/",
}


@dataclass(frozen=True)
class SingleLabel:
    """data/<label>/<file>: the folder is the label."""

    kind: str = SINGLE_LABEL
    noun: str = "class"  # in the summary: "kept 40 images in 3 classes", "per class"
    nouns: str = "classes"
    some: str = "class(es)"

    def labelled(
        self, data_dir: Path, listed: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[Problem]]:
        """(path, label) of the files to clean, and those rejected for their label."""
        return listed, []

    def screen(self, label: str, allowed: set[str] | None) -> tuple[str, str | None]:
        """The label as clean.yaml `classes` leaves it, and why the file is rejected if so."""
        if allowed is not None and label not in allowed:
            return label, f"{label!r} is not in `classes`"
        return label, None

    def counts(self, labels: Iterable[str]) -> dict[str, int]:
        """Images per label."""
        counts: dict[str, int] = {}
        for label in labels:
            counts[printable(label)] = counts.get(printable(label), 0) + 1
        return counts

    def manifest(
        self, manifest: pd.DataFrame, sources: pd.DataFrame | None
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The manifest's label columns, and the sources.csv columns left to join on `path`."""
        return manifest, sources

    def warnings(self, table: pd.DataFrame) -> list[str]:
        """Warnings about the per-label table beyond the empty classes and the imbalance."""
        return []


@dataclass(frozen=True)
class MultiLabel:
    """data/_images/<file>, its set of labels in data/sources.csv (`labels`)."""

    allow_empty: bool = False
    kind: str = MULTI_LABEL
    noun: str = "label"
    nouns: str = "labels"
    some: str = "label(s)"

    def labelled(
        self, data_dir: Path, listed: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[Problem]]:
        sets = _source_sets(data_dir)
        files: list[tuple[str, str]] = []
        problems: list[Problem] = []
        for rel, folder in listed:
            cell = sets.get(rel)
            if folder != IMAGES_FOLDER:
                problems.append((rel, "no_label", f"multi-label images are in {IMAGES_FOLDER}/"))
            elif cell is None:
                problems.append((rel, "no_label", f"no row in data/{SOURCES_FILE}"))
            elif not cell and not self.allow_empty:
                detail = "an empty label set (data/task.json: allow_empty is false)"
                problems.append((rel, "no_label", detail))
            else:
                files.append((rel, cell))
        return files, problems

    def screen(self, label: str, allowed: set[str] | None) -> tuple[str, str | None]:
        """The set without the labels `classes` leaves out; a set left empty is rejected unless
        empty sets are allowed."""
        if allowed is None:
            return label, None
        labels = split_set(label)
        kept = join_set(lb for lb in labels if lb in allowed)
        if labels and not kept and not self.allow_empty:
            return kept, f"none of its labels {labels} is in `classes`"
        return kept, None

    def counts(self, labels: Iterable[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in labels:
            for label in split_set(cell):
                counts[label] = counts.get(label, 0) + 1
        return counts

    def manifest(
        self, manifest: pd.DataFrame, sources: pd.DataFrame | None
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """`labels` (the kept set) and `original_labels` (the user's names of those labels, a
        JSON list in the same order) in place of `label` and `original_label`."""
        manifest = manifest.rename(columns={"label": "labels"})
        names: dict[str, dict[str, str]] = {}
        if sources is not None and {"labels", "original_labels"} <= set(sources.columns):
            for path, cell, originals in zip(
                sources["path"], sources["labels"], sources["original_labels"], strict=True
            ):
                names[path] = dict(zip(split_set(cell), _json_list(originals), strict=False))
            sources = sources.drop(columns=["labels", "original_labels"])
        manifest.insert(
            list(manifest.columns).index("dup_group") + 1,
            "original_labels",
            [
                json.dumps(
                    [names.get(path, {}).get(lb, lb) for lb in split_set(cell)], ensure_ascii=False
                )
                for path, cell in zip(manifest["path"], manifest["labels"], strict=True)
            ],
        )
        return manifest, sources

    def warnings(self, table: pd.DataFrame) -> list[str]:
        rare = table[(table["kept"] > 0) & (table["kept"] < RARE_LABEL)]
        if rare.empty:
            return []
        counts = ", ".join(f"{r.label} {r.kept}" for r in rare.itertuples())
        return [
            f"rare label(s): {counts} kept image(s), fewer than {RARE_LABEL}: too few to learn "
            "or to measure; collect more, or drop them with clean.yaml `classes`"
        ]


LabelKind = SingleLabel | MultiLabel


def label_kind(data_dir: Path | None) -> LabelKind:
    """The kind of data/: multi-label when data/task.json says so, else single-label."""
    task = data_task(data_dir) if data_dir is not None else None
    if task is None:
        return SingleLabel()
    return MultiLabel(allow_empty=task["allow_empty"])


def _source_sets(data_dir: Path) -> dict[str, str]:
    """{path: canonical set string} from data/sources.csv (empty without a `labels` column)."""
    path = data_dir / SOURCES_FILE
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"path", "labels"} <= set(frame.columns):
        return {}
    return {p: join_set(split_set(c)) for p, c in zip(frame["path"], frame["labels"], strict=True)}


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []
