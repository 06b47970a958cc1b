"""The split stage's flow: clean manifest → stable, stratified train/val/test assignment."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow

from flows.naming import stage_run_name
from flows.project import Project
from params import SplitParams
from tasks.files import fresh_dir, write_csv, write_parquet
from tasks.report import publish_markdown
from tasks.split import SPLITS, split_counts, split_task


@flow(name="split", flow_run_name=stage_run_name("split"), log_prints=True)
def split_flow(params: SplitParams, root: str = ".") -> dict:
    project = Project(Path(root))
    manifest = pd.read_parquet(project.artifacts("clean") / "manifest.parquet")
    out = fresh_dir(project.artifacts("split"))
    split = split_task(manifest, params)
    write_parquet(split, out / "split.parquet")
    counts = split_counts(split)
    write_csv(counts.reset_index(), out / "counts.csv")
    publish_markdown("split-summary", "# split\n\n" + counts.to_markdown())
    return {s: int(counts[s].sum()) for s in SPLITS}
