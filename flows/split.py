"""The split stage's flow: clean manifest → stable, stratified train/val/test (+ k folds).

Multi-label data keeps its assignment stable through the previous split: the flow
reads artifacts/split/split.parquet before it empties the folder, and hands it to
the split only when artifacts/split/ledger.json (written for multi-label data only)
says it was made with the same split params. dvc.yaml declares the folder
`persist: true` so that `dvc repro` leaves it there for the flow to read.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_markdown
from params import SplitParams
from tasks.files import fresh_dir, write_csv, write_json, write_parquet
from tasks.label_task import task_of
from tasks.split import SPLITS, fold_counts, split_counts, split_digest, split_task

LEDGER = "ledger.json"  # multi-label only: the params the split.parquet beside it was made with


def previous_split(folder: Path, params: SplitParams) -> tuple[pd.DataFrame | None, str | None]:
    """(the previous split, if it was made with these params; a message when one was there
    but cannot be reused)."""
    ledger_path, split_path = folder / LEDGER, folder / "split.parquet"
    if not ledger_path.is_file() or not split_path.is_file():
        return None, None
    try:
        ledger = json.loads(ledger_path.read_text())
        before = ledger["split_params"] if isinstance(ledger, dict) else None
        if not isinstance(before, dict):
            raise ValueError("no split_params")
    except (OSError, ValueError, KeyError):
        return None, f"{ledger_path} is unreadable: every image is drawn anew"
    if ledger.get("digest") != split_digest(params):
        now = params.model_dump(mode="json")
        changed = [f"{k} {before.get(k)!r} → {v!r}" for k, v in now.items() if before.get(k) != v]
        return None, (
            "split.yaml changed since the last split ("
            + (", ".join(changed) or "its digest")
            + "): the previous assignment is discarded and every image is drawn anew"
        )
    try:
        previous = pd.read_parquet(split_path)
    except (OSError, ValueError) as exc:
        return None, f"the previous {split_path} is unreadable ({exc}): every image is drawn anew"
    return previous, None


@flow(name="split", flow_run_name=stage_run_name("split"), log_prints=True)
def split_flow(params: SplitParams, root: str = ".") -> dict:
    log = get_run_logger()
    project = Project(Path(root))
    manifest = pd.read_parquet(project.artifacts("clean") / "manifest.parquet")
    task = task_of(manifest)
    keeps = not task.stable_by_key  # multi-label: the previous split fixes the old images
    previous, note = previous_split(project.artifacts("split"), params)  # before it is emptied
    out = fresh_dir(project.artifacts("split"))
    plan = split_task(manifest, params, previous if keeps else None)
    messages = ([note] if note and keeps else []) + plan.messages
    split = plan.frame
    write_parquet(split, out / "split.parquet")
    list_columns = ["path", task.column] + (["fold"] if params.folds else [])
    for name in SPLITS:  # plain lists for tools that do not read parquet
        write_csv(split.loc[split["split"] == name, list_columns], out / f"{name}.csv")
    counts = split_counts(split)
    write_csv(counts.reset_index(), out / "counts.csv")
    summary = "# split\n\n" + "".join(f"> **warning:** {m}\n\n" for m in messages)
    summary += counts.to_markdown()
    if params.folds:
        folds = fold_counts(split, params.folds)
        write_csv(folds.reset_index(), out / "folds.csv")
        summary += f"\n\n## {params.folds} folds over train + val\n\n" + folds.to_markdown()
    if keeps:  # single-label assignment needs no ledger: each key fixes its own split
        ledger = {
            "task": task.kind,
            "digest": split_digest(params),
            "split_params": params.model_dump(mode="json"),
            "images": len(split),
        }
        write_json(ledger, out / LEDGER)
    for message in messages:
        log.warning(message)
    publish_markdown("split-summary", summary)
    sizes = {s: int((split["split"] == s).sum()) for s in SPLITS}
    log.info(
        "split: %s of %d images in %d %s%s",
        ", ".join(f"{n} {s}" for s, n in sizes.items()),
        len(split),
        len(counts),
        task.nouns,
        f", {params.folds} folds over train + val" if params.folds else "",
    )
    return sizes
