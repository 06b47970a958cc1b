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
from tasks.evaluate import confusion_frame, evaluate_predictions
from tasks.figures import plot_confusion, plot_gallery, plot_reliability
from tasks.files import fresh_dir, write_csv, write_json
from tasks.model import pick_device
from tasks.report import publish_image, publish_markdown, publish_table
from tasks.train import MODEL, load_model, predict_logits


def misclassified_gallery(predictions: pd.DataFrame, n: int) -> pd.DataFrame:
    """The `n` misclassified test images with the highest loss (most confidently wrong first)."""
    wrong = predictions[predictions["actual"] != predictions["predicted"]]
    rows = wrong.sort_values("loss", ascending=False).head(n).copy()
    rows["gallery"] = [
        f"true {r.actual}\npred {r.predicted} ({r.confidence:.2f})" for r in rows.itertuples()
    ]
    return rows


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
        net, make_loader(dataset, params.batch_size, False, 0, 0), device, tta=params.tta
    )
    probs = torch.softmax(logits, 1).numpy()
    ev = evaluate_predictions(
        probs,
        targets.numpy(),
        classes,
        test["path"].tolist(),
        params.top_k,
        params.calibration_bins,
    )
    ev.metrics["tta"] = params.tta
    write_json(ev.metrics, out / "metrics.json")
    write_csv(ev.per_class, out / "per_class.csv")
    write_csv(ev.predictions, out / "predictions.csv")
    write_csv(confusion_frame(ev.confusion, classes), out / "confusion.csv")
    write_csv(
        confusion_frame(ev.confusion_normalized.round(4), classes), out / "confusion_normalized.csv"
    )
    plot_confusion(ev.confusion, ev.confusion_normalized, classes, out / "confusion.png")
    plot_reliability(
        probs, targets.numpy(), params.calibration_bins, ev.metrics["ece"], out / "reliability.png"
    )
    gallery = misclassified_gallery(
        ev.predictions.assign(sha256=test["sha256"].to_numpy()), params.gallery
    )
    write_csv(gallery.drop(columns=["gallery"]), out / "misclassified.csv")
    title = "misclassified test images, highest loss first" if len(gallery) else "no mistakes"
    plot_gallery(gallery, data.clean_dir, title, out / "misclassified.png")
    publish_image("evaluate-misclassified", out / "misclassified.png", "misclassified images")
    publish_markdown(
        "evaluate-summary",
        "# evaluate (test split)\n\n"
        + pd.Series(ev.metrics).to_frame("value").to_markdown(floatfmt=".4f"),
    )
    publish_table("evaluate-per-class", ev.per_class, "per-class metrics on the test split")
    publish_image("evaluate-confusion", out / "confusion.png", "test confusion matrix")
    publish_image("evaluate-reliability", out / "reliability.png", "reliability diagram")
    return ev.metrics
