"""The clean stage's flow: raw data/ → decoded, resized cache + manifest + rejections."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.naming import stage_run_name
from flows.project import Project
from params import CleanParams
from tasks.clean import clean_images, write_manifest
from tasks.files import fresh_dir
from tasks.report import publish_markdown, publish_table


@flow(name="clean", flow_run_name=stage_run_name("clean"), log_prints=True)
def clean_flow(params: CleanParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = fresh_dir(project.artifacts("clean"))
    records, rejected = clean_images(project.data, out, params)
    manifest = write_manifest(records, rejected, out)
    counts = manifest.groupby("label").size().rename("images").reset_index()
    reasons = pd.Series([r.reason for r in rejected], dtype=str).value_counts()
    publish_markdown(
        "clean-summary",
        f"# clean\n\nkept **{len(records)}** images in **{len(counts)}** classes, "
        f"rejected **{len(rejected)}**.\n\n"
        + (reasons.rename("files").to_frame().to_markdown() + "\n\n" if len(reasons) else "")
        + counts.to_markdown(index=False),
    )
    if rejected:
        publish_table("clean-rejected", pd.read_csv(out / "rejected.csv"), "rejected files")
        get_run_logger().warning("%d file(s) rejected: see %s", len(rejected), out / "rejected.csv")
    return {"kept": len(records), "rejected": len(rejected), "classes": len(counts)}
