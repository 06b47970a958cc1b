"""The split stage's flow: clean manifest → stable, stratified train/val/test (+ k folds)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_markdown
from params import SplitParams
from tasks.files import fresh_dir, write_csv, write_parquet
from tasks.split import SPLITS, fold_counts, split_counts, split_task


@flow(name="split", flow_run_name=stage_run_name("split"), log_prints=True)
def split_flow(params: SplitParams, root: str = ".") -> dict:
    log = get_run_logger()
    project = Project(Path(root))
    manifest = pd.read_parquet(project.artifacts("clean") / "manifest.parquet")
    out = fresh_dir(project.artifacts("split"))
    plan = split_task(manifest, params)
    split = plan.frame
    write_parquet(split, out / "split.parquet")
    list_columns = ["path", "label"] + (["fold"] if params.folds else [])
    for name in SPLITS:  # plain lists for tools that do not read parquet
        write_csv(split.loc[split["split"] == name, list_columns], out / f"{name}.csv")
    counts = split_counts(split)
    write_csv(counts.reset_index(), out / "counts.csv")
    summary = "# split\n\n" + "".join(f"> **warning:** {m}\n\n" for m in plan.messages)
    summary += counts.to_markdown()
    if params.folds:
        folds = fold_counts(split, params.folds)
        write_csv(folds.reset_index(), out / "folds.csv")
        summary += f"\n\n## {params.folds} folds over train + val\n\n" + folds.to_markdown()
    for message in plan.messages:
        log.warning(message)
    publish_markdown("split-summary", summary)
    sizes = {s: int(counts[s].sum()) for s in SPLITS}
    log.info(
        "split: %s of %d images in %d classes%s",
        ", ".join(f"{n} {s}" for s, n in sizes.items()),
        len(split),
        len(counts),
        f", {params.folds} folds over train + val" if params.folds else "",
    )
    return sizes
