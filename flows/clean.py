"""The clean stage's flow: raw data/ → decoded, resized cache + manifest + rejections.

The output folder is not emptied first: it holds the incremental cache (shards/
and cache_index.parquet, see tasks/clean_cache.py and tasks/shards.py), and dvc.yaml
declares it `persist: true` for the same reason.
Files the stage does not own are removed, so nothing stale is left.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.naming import stage_run_name
from flows.project import Project
from flows.report import ProgressArtifact, publish_markdown, publish_table
from params import CleanParams
from tasks.clean import OWN_FILES, clean_dataset
from tasks.clean_manifest import class_table, imbalance_warning, write_manifest
from tasks.files import fresh_dir, write_csv

# the stage's work as Prefect task runs: the same functions, no second signature to keep
clean_task = task(name="clean-dataset", cache_policy=NO_CACHE)(clean_dataset)
manifest_task = task(name="write-manifest", cache_policy=NO_CACHE)(write_manifest)


@flow(name="clean", flow_run_name=stage_run_name("clean"), log_prints=True)
def clean_flow(params: CleanParams, root: str = ".") -> dict:
    log = get_run_logger()
    project = Project(Path(root))
    out = fresh_dir(project.artifacts("clean"), keep=OWN_FILES)  # the cache is incremental
    on_progress = ProgressArtifact("clean-progress", "decoding", step=5)
    # raw-file hashes by size + mtime: kept out of the DVC-tracked folder (machine-specific)
    hashes = project.root / ".cache" / "clean_raw_hashes.parquet"
    checks = project.root / ".cache" / "clean_shard_checks.json"  # the same for shards
    result = clean_task(project.data, out, params, on_progress, hashes, checks_file=checks)
    # quote: Prefect would otherwise visit every record to track task inputs (seconds at 10k)
    manifest = manifest_task(quote(result.records), quote(result.rejected), out, project.data)
    classes = class_table(result)
    write_csv(classes, out / "classes.csv")
    reasons = (
        pd.Series([r.reason for r in result.rejected], dtype=str)
        .value_counts()
        .rename_axis("reason")
        .rename("files")
        .reset_index()
    )
    total = result.raw_files
    kind = result.kind  # single- or multi-label: the words of the summary, its warnings
    warnings = []
    if result.rebuilt_shards:
        warnings.append(
            f"{len(result.rebuilt_shards)} cache shard(s) failed their checksum (truncated or "
            f"corrupted: {', '.join(result.rebuilt_shards)}); their images were decoded again "
            "from data/"
        )
    empty = classes.loc[classes["kept"] == 0, "label"].tolist()
    if empty:
        warnings.append(f"{kind.some} {empty} have no usable image left after cleaning")
    imbalance = imbalance_warning(classes, params.imbalance_ratio, kind.noun)
    if imbalance:
        warnings.append(imbalance)
    warnings += kind.warnings(classes)
    for message in warnings:
        log.warning(message)
    publish_markdown(
        "clean-summary",
        f"# clean\n\nkept **{len(manifest)}** images in **{(classes['kept'] > 0).sum()}** "
        f"{kind.nouns}, rejected **{len(result.rejected)}**; decoded **{len(result.processed)}** "
        f"file(s), the other {total - len(result.processed)} came from the cache.\n\n"
        + "".join(f"> **warning:** {m}\n\n" for m in warnings)
        + "## rejections per reason\n\n"
        + (reasons.to_markdown(index=False) if len(reasons) else "none")
        + f"\n\n## per {kind.noun}, before and after\n\n"
        + classes.to_markdown(index=False),
    )
    if result.rejected:
        publish_table("clean-rejected", pd.read_csv(out / "rejected.csv"), "rejected files")
        log.warning("%d file(s) rejected: see %s", len(result.rejected), out / "rejected.csv")
    log.info(  # the run's last line: what a person watching the UI wants to know
        "clean: decoded %d of %d file(s) (%d from the cache); kept %d in %d %s, rejected %d",
        len(result.processed),
        total,
        total - len(result.processed),
        len(manifest),
        (classes["kept"] > 0).sum(),
        kind.nouns,
        len(result.rejected),
    )
    return {
        "kept": len(manifest),
        "rejected": len(result.rejected),
        "classes": int((classes["kept"] > 0).sum()),
        "decoded": len(result.processed),
    }
