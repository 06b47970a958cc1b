"""The evaluate stage's flow: the trained model on the test split → metrics, tables, plots."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger

from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_image, publish_markdown, publish_table
from params import EvaluateParams
from tasks.evaluate import confusion_frame, misclassified_gallery
from tasks.figures import plot_calibration, plot_confusion, plot_gallery, plot_pr_curves
from tasks.files import fresh_dir, write_csv, write_json
from tasks.inference import MODEL, class_labels, predict_probs
from tasks.label_task import task_named
from tasks.model import pick_device
from tasks.split import SplitError


@flow(name="evaluate", flow_run_name=stage_run_name("evaluate"), log_prints=True)
def evaluate_flow(params: EvaluateParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = fresh_dir(project.artifacts("evaluate"))
    test = pd.read_parquet(project.artifacts("split") / "split.parquet")
    test = test[test["split"] == "test"]
    if test.empty:
        raise SplitError("the test split is empty: add images")
    clean_dir = project.artifacts("clean")
    probs, targets, meta = predict_probs(
        project.artifacts("train") / MODEL,
        test,
        clean_dir,
        pick_device("auto"),
        params.batch_size,
        tta=params.tta,
    )
    classes = class_labels(meta)  # reports speak the user's labels, as predict does
    task = task_named(meta.get("task"))
    ev = task.evaluate(probs, targets, classes, test["path"].tolist(), params, meta)
    ev.metrics["tta"] = params.tta
    write_json(ev.metrics, out / "metrics.json")
    write_csv(ev.per_class, out / "per_class.csv")
    write_csv(ev.predictions, out / "predictions.csv")
    write_csv(confusion_frame(ev.confusion, classes), out / "confusion.csv")
    write_csv(
        confusion_frame(ev.confusion_normalized.round(4), classes), out / "confusion_normalized.csv"
    )
    write_csv(ev.curves, out / "pr_curves.csv")
    plot_confusion(ev.confusion, ev.confusion_normalized, classes, out / "confusion.png")
    plot_calibration(
        *ev.calibration,
        params.calibration_bins,
        ev.metrics["ece"],
        out / "reliability.png",
        *task.calibration_axis,
    )
    plot_pr_curves(ev.curves, ev.ap, out / "pr_curves.png")
    gallery = misclassified_gallery(
        ev.per_image.assign(sha256=test["sha256"].to_numpy()), params.gallery
    )
    write_csv(gallery.drop(columns=["gallery"]), out / "misclassified.csv")
    title = "misclassified test images, highest loss first" if len(gallery) else "no mistakes"
    plot_gallery(gallery, clean_dir, title, out / "misclassified.png")
    publish_image("evaluate-misclassified", out / "misclassified.png", "misclassified images")
    summary = task.headline(ev)
    publish_markdown(
        "evaluate-summary",
        f"# evaluate (test split)\n\n{summary}\n\n"
        + pd.Series(ev.metrics).to_frame("value").to_markdown(floatfmt=".4f"),
    )
    publish_table("evaluate-per-class", ev.per_class, "per-class metrics on the test split")
    publish_image("evaluate-confusion", out / "confusion.png", task.confusion_title)
    publish_image("evaluate-reliability", out / "reliability.png", "reliability diagram")
    publish_image("evaluate-pr-curves", out / "pr_curves.png", "precision-recall curves")
    get_run_logger().info("evaluate: %s", summary)
    return ev.metrics
