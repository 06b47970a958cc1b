"""The evaluate stage's flow: the trained model on the test split → metrics, tables, plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from prefect import flow

from flows.naming import stage_run_name
from flows.project import Project
from params import EvaluateParams
from tasks.dataset import CachedImages, make_loader
from tasks.evaluate import evaluate_predictions, plot_confusion
from tasks.files import fresh_dir, write_csv, write_json
from tasks.model import pick_device
from tasks.report import publish_image, publish_markdown, publish_table
from tasks.train import MODEL, load_model, predict_logits


@flow(name="evaluate", flow_run_name=stage_run_name("evaluate"), log_prints=True)
def evaluate_flow(params: EvaluateParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = fresh_dir(project.artifacts("evaluate"))
    device = pick_device("auto")
    net, meta = load_model(project.artifacts("train") / MODEL, str(device))
    data = project.train_data(image_size=meta["image_size"])
    test = data.part("test")
    if test.empty:
        raise ValueError("the test split is empty: set split.test > 0 or add images")
    classes = meta["classes"]
    dataset = CachedImages(test, data.clean_dir, data.eval_pipeline, classes)
    logits, targets = predict_logits(
        net, make_loader(dataset, params.batch_size, False, 0, 0), device
    )
    probs = torch.softmax(logits, 1).numpy()
    ev = evaluate_predictions(probs, targets.numpy(), classes, test["path"].tolist(), params.top_k)
    write_json(ev.metrics, out / "metrics.json")
    write_csv(ev.per_class, out / "per_class.csv")
    write_csv(ev.predictions, out / "predictions.csv")
    plot_confusion(ev.confusion, classes, out / "confusion.png")
    publish_markdown(
        "evaluate-summary",
        "# evaluate (test split)\n\n"
        + pd.Series(ev.metrics).round(4).to_frame("value").to_markdown(),
    )
    publish_table("evaluate-per-class", ev.per_class, "per-class metrics on the test split")
    publish_image("evaluate-confusion", out / "confusion.png", "test confusion matrix")
    return ev.metrics
