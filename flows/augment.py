"""The augment stage's flow: params → saved albumentations pipelines, a preview, a balance plan."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_image, publish_markdown
from params import AugmentParams, TrainParams
from tasks.augment import build_pipelines, render_preview, save_pipeline
from tasks.balance import balance_plan, plan_table
from tasks.files import fresh_dir, write_json
from tasks.label_task import task_of
from tasks.model import preprocessing


@flow(name="augment", flow_run_name=stage_run_name("augment"), log_prints=True)
def augment_flow(params: AugmentParams, train: TrainParams, root: str = ".") -> dict:
    project = Project(Path(root))
    split = pd.read_parquet(project.artifacts("split") / "split.parquet")
    params = task_of(split).recipe(params)  # multi-label data: augment.yaml's `multi_label:`
    out = fresh_dir(project.artifacts("augment"))
    model_mean, model_std = preprocessing(train.model)
    mean = model_mean if params.mean == "auto" else params.mean
    std = model_std if params.std == "auto" else params.std
    train_pipe, eval_pipe = build_pipelines(params, mean, std)
    save_pipeline(train_pipe, out / "train.yaml")
    save_pipeline(eval_pipe, out / "eval.yaml")
    plan = balance_plan(split, params.balance)
    write_json(plan, out / "balance.json")
    render_preview(split, project.artifacts("clean"), params, out / "preview.png")
    publish_image("augment-preview", out / "preview.png", "augmentation preview")
    publish_markdown(
        "augment-balance",
        f"# class balance: `{params.balance}`\n\n" + plan_table(plan).to_markdown(index=False),
    )
    get_run_logger().info(
        "augment: %s preset at %d px, balance %s, mean %s, std %s",
        params.preset,
        params.image_size,
        params.balance,
        tuple(round(v, 3) for v in mean),
        tuple(round(v, 3) for v in std),
    )
    return {
        "image_size": params.image_size,
        "mean": list(mean),
        "std": list(std),
        "preset": params.preset,
        "balance": params.balance,
    }
