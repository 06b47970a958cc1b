"""The clean stage's tables: the manifest of kept images, rejected.csv, the per-class summary."""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from tasks.clean_rules import CleanRecord, Rejection
from tasks.files import write_csv, write_parquet
from tasks.label_task import SingleLabel, task_of_data
from tasks.sources import SOURCES_FILE

if TYPE_CHECKING:
    from tasks.clean import CleanResult


def source_columns(data_dir: Path) -> pd.DataFrame | None:
    """data/sources.csv (written by collect) as columns to join on `path`: source, original
    label and any extra manifest columns such as `group`."""
    path = data_dir / SOURCES_FILE
    if not path.is_file():
        return None
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if "path" not in frame.columns:
        return None
    frame = frame.drop(columns=[c for c in ("sha256",) if c in frame.columns])
    return frame.rename(columns={"label": "original_label"}).drop_duplicates("path")


def build_manifest(
    records: list[CleanRecord], data_dir: Path | None = None, kind: SingleLabel | None = None
) -> pd.DataFrame:
    """The kept images with sources.csv's columns; multi-label data (data/task.json, or
    `kind`) gets `labels`/`original_labels` instead of `label`/`original_label`."""
    manifest = pd.DataFrame(
        [vars(r) for r in records], columns=[f.name for f in fields(CleanRecord)]
    )
    sources = source_columns(data_dir) if data_dir is not None else None
    manifest, sources = (kind or task_of_data(data_dir)).manifest(manifest, sources)
    if sources is not None:
        extra = [c for c in sources.columns if c == "path" or c not in manifest.columns]
        manifest = manifest.merge(sources[extra], on="path", how="left")
        for column in extra[1:]:
            manifest[column] = manifest[column].fillna("")
    return manifest


def write_manifest(
    records: list[CleanRecord],
    rejected: list[Rejection],
    out_dir: Path,
    data_dir: Path | None = None,
) -> pd.DataFrame:
    manifest = build_manifest(records, data_dir)
    write_parquet(manifest, out_dir / "manifest.parquet")
    rejections = pd.DataFrame([asdict(r) for r in rejected], columns=["path", "reason", "detail"])
    write_csv(rejections, out_dir / "rejected.csv")
    return manifest


def class_table(result: CleanResult) -> pd.DataFrame:
    """Per class (multi-label: per label): raw files before cleaning, images kept, files
    rejected (multi-label: images that had the label and are not kept with it)."""
    kept = result.kind.counts(r.label for r in result.records)
    labels = sorted(set(result.raw_counts) | set(kept))
    table = pd.DataFrame(
        {
            "label": labels,
            "raw": [result.raw_counts.get(lb, 0) for lb in labels],
            "kept": [int(kept.get(lb, 0)) for lb in labels],
        }
    )
    table["rejected"] = table["raw"] - table["kept"]
    return table


def imbalance_warning(table: pd.DataFrame, ratio: float, noun: str = "class") -> str | None:
    kept = table[table["kept"] > 0].set_index("label")["kept"]
    if len(kept) < 2 or kept.max() <= ratio * kept.min():
        return None
    return (
        f"{noun} imbalance: {kept.idxmax()} has {kept.max()} images, {kept.idxmin()} has "
        f"{kept.min()} ({kept.max() / kept.min():.1f}x > imbalance_ratio {ratio:g}); "
        "consider augment.yaml `balance:`"
    )
