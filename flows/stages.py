"""One Prefect flow per pipeline stage; `visiontune stage <name>` and `visiontune run` call these.

Each flow reads its inputs from the previous stages' files, writes its own
folder under artifacts/, and publishes Prefect artifacts (summary, tables,
images). Params arrive as the validated pydantic models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import yaml
from prefect import flow, get_run_logger

from flows.project import Project
from params import (
    AugmentParams,
    CleanParams,
    EvaluateParams,
    SplitParams,
    TrainParams,
    TuneParams,
)
from tasks.files import atomic_path, write_text_atomic


def _fresh(folder: Path) -> Path:
    """Start a stage's output folder empty, as `dvc repro` does, so nothing stale is kept."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def _write_yaml(data: dict, path: Path) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def _write_json(data: dict, path: Path) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


@flow(name="clean", log_prints=True)
def clean_flow(params: CleanParams, root: str = ".") -> dict:
    from tasks.clean import clean_images, write_manifest
    from tasks.report import publish_markdown, publish_table

    project = Project(Path(root))
    out = _fresh(project.artifacts("clean"))
    records, rejected = clean_images(project.data, out, params)
    manifest = write_manifest(records, rejected, out)
    counts = manifest.groupby("label").size().rename("images").reset_index()
    reasons = pd.Series([r.reason for r in rejected], dtype=str).value_counts()
    summary = {"kept": len(records), "rejected": len(rejected), "classes": len(counts)}
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
    return summary


@flow(name="split", log_prints=True)
def split_flow(params: SplitParams, root: str = ".") -> dict:
    from tasks.report import publish_markdown
    from tasks.split import split_counts, split_task

    project = Project(Path(root))
    manifest = pd.read_parquet(project.artifacts("clean") / "manifest.parquet")
    out = _fresh(project.artifacts("split"))
    split = split_task(manifest, params)
    with atomic_path(out / "split.parquet") as tmp:
        split.to_parquet(tmp, index=False)
    counts = split_counts(split)
    _write_csv(counts.reset_index(), out / "counts.csv")
    publish_markdown("split-summary", "# split\n\n" + counts.to_markdown())
    return {s: int(counts[s].sum()) for s in ("train", "val", "test")}


def _normalisation(params: AugmentParams, train: TrainParams) -> tuple[tuple, tuple]:
    from tasks.model import preprocessing

    mean, std = preprocessing(train.model)
    return (
        mean if params.mean == "auto" else params.mean,
        std if params.std == "auto" else params.std,
    )


@flow(name="augment", log_prints=True)
def augment_flow(params: AugmentParams, train: TrainParams, root: str = ".") -> dict:
    from tasks.augment import build_pipelines, render_preview, save_pipeline
    from tasks.report import publish_image

    project = Project(Path(root))
    split = pd.read_parquet(project.artifacts("split") / "split.parquet")
    out = _fresh(project.artifacts("augment"))
    mean, std = _normalisation(params, train)
    train_pipe, eval_pipe = build_pipelines(params, mean, std)
    save_pipeline(train_pipe, out / "train.yaml")
    save_pipeline(eval_pipe, out / "eval.yaml")
    render_preview(split, project.artifacts("clean"), params, out / "preview.png")
    publish_image("augment-preview", out / "preview.png", "augmentation preview")
    return {"image_size": params.image_size, "mean": list(mean), "std": list(std)}


def _train_data(project: Project, image_size: int | None = None):
    from tasks.augment import load_pipeline
    from tasks.train import TrainData

    augment = project.artifacts("augment")
    if image_size is None:
        image_size = project.params("augment").image_size  # type: ignore[attr-defined]
    return TrainData(
        split=pd.read_parquet(project.artifacts("split") / "split.parquet"),
        clean_dir=project.artifacts("clean"),
        train_pipeline=load_pipeline(augment / "train.yaml"),
        eval_pipeline=load_pipeline(augment / "eval.yaml"),
        image_size=image_size,
    )


TUNED_KEYS = ("lr", "weight_decay", "freeze_epochs")


@flow(name="tune", log_prints=True)
def tune_flow(params: TuneParams, train: TrainParams, root: str = ".") -> dict:
    from tasks.report import publish_markdown, publish_table

    project = Project(Path(root))
    out = _fresh(project.artifacts("tune"))
    best = {k: getattr(train, k) for k in TUNED_KEYS}
    record: dict = {"source": "params/train.yaml (n_trials: 0)", **best}
    if params.n_trials > 0:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        from tasks.tune import best_train_params, run_study, trials_table

        log = get_run_logger()
        progress = create_progress_artifact(0.0, key="tune-progress", description="trials")

        def on_trial(trial) -> None:
            log.info(
                "trial %d %s value=%s %s", trial.number, trial.state.name, trial.value, trial.params
            )
            update_progress_artifact(progress, 100.0 * (trial.number + 1) / params.n_trials)

        study = run_study(params, train, _train_data(project), out, on_trial=on_trial)
        tuned = best_train_params(study, train)
        table = trials_table(study)
        _write_csv(table, out / "trials.csv")
        publish_table("tune-trials", table, "Optuna trials")
        best = {k: getattr(tuned, k) for k in TUNED_KEYS}
        completed = table[table["state"] == "COMPLETE"]
        record = {
            "source": "optuna",
            **best,
            "trials": len(table),
            "completed": len(completed),
            f"best_{params.metric}": study.best_value if len(completed) else None,
        }
    _write_yaml(record, out / "best_params.yaml")
    publish_markdown(
        "tune-summary", "# tune\n\n" + pd.Series(record).to_frame("value").to_markdown()
    )
    return record


def tuned_train_params(project: Project, train: TrainParams) -> TrainParams:
    """train.yaml overlaid with the tune stage's best values."""
    best = yaml.safe_load((project.artifacts("tune") / "best_params.yaml").read_text())
    return train.model_copy(update={k: best[k] for k in TUNED_KEYS if k in best})


def _plot_curves(history: pd.DataFrame, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    epochs = history["epoch"] + 1
    for col in ("train_loss", "val_loss"):
        ax_loss.plot(epochs, history[col], marker="o", label=col)
    for col in ("train_accuracy", "val_accuracy"):
        ax_acc.plot(epochs, history[col], marker="o", label=col)
    for ax, title in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


@flow(name="train", log_prints=True)
def train_flow(params: TrainParams, root: str = ".") -> dict:
    from dataclasses import asdict

    from dvclive import Live
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    from tasks.report import publish_image, publish_markdown
    from tasks.train import CHECKPOINT, fit, load_checkpoint, run_fingerprint

    project = Project(Path(root))
    out = project.artifacts("train")
    out.mkdir(parents=True, exist_ok=True)
    params = tuned_train_params(project, params)
    data = _train_data(project)
    log = get_run_logger()
    log.info(
        "training %s on %d classes with %s",
        params.model,
        len(data.classes),
        {k: getattr(params, k) for k in TUNED_KEYS},
    )
    progress = create_progress_artifact(0.0, key="train-progress", description="epochs")
    resume = load_checkpoint(out / CHECKPOINT, run_fingerprint(params, data)) is not None
    with Live(
        dir=str(out / "live"), resume=resume, dvcyaml=None, save_dvc_exp=False, report=None
    ) as live:

        def on_epoch(m) -> None:
            for key, value in asdict(m).items():
                if key not in ("epoch", "frozen") and value is not None:
                    live.log_metric(key, value)
            live.next_step()
            log.info(
                "epoch %d/%d%s train_loss=%.4f val_loss=%s val_accuracy=%s",
                m.epoch + 1,
                params.epochs,
                " (head only)" if m.frozen else "",
                m.train_loss,
                f"{m.val_loss:.4f}" if m.val_loss is not None else "-",
                f"{m.val_accuracy:.4f}" if m.val_accuracy is not None else "-",
            )
            update_progress_artifact(progress, 100.0 * (m.epoch + 1) / params.epochs)

        result = fit(params, data, out_dir=out, on_epoch=on_epoch)
    if result.resumed_from is not None:
        log.info("resumed from the checkpoint after epoch %d", result.resumed_from)
    history = pd.DataFrame([asdict(m) for m in result.history])
    _write_csv(history, out / "history.csv")
    _plot_curves(history, out / "curves.png")
    best = result.best
    summary = {
        "best_epoch": result.best_epoch + 1,
        "epochs_run": len(history),
        "stopped_early": result.stopped_early,
        "val_loss": best.val_loss if best else None,
        "val_accuracy": best.val_accuracy if best else None,
    }
    publish_markdown(
        "train-summary",
        f"# train\n\n`{params.model}`, {len(data.classes)} classes\n\n"
        + pd.Series(summary).to_frame("value").to_markdown()
        + "\n\n"
        + history.round(4).to_markdown(index=False),
    )
    publish_image("train-curves", out / "curves.png", "training curves")
    return summary


@flow(name="evaluate", log_prints=True)
def evaluate_flow(params: EvaluateParams, root: str = ".") -> dict:
    import torch

    from tasks.dataset import CachedImages, make_loader
    from tasks.evaluate import evaluate_predictions, plot_confusion
    from tasks.model import pick_device
    from tasks.report import publish_image, publish_markdown, publish_table
    from tasks.train import load_model, predict_logits

    project = Project(Path(root))
    out = _fresh(project.artifacts("evaluate"))
    device = pick_device("auto")
    net, meta = load_model(project.artifacts("train") / "model.pt", str(device))
    data = _train_data(project, image_size=meta["image_size"])
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
    _write_json(ev.metrics, out / "metrics.json")
    _write_csv(ev.per_class, out / "per_class.csv")
    _write_csv(ev.predictions, out / "predictions.csv")
    plot_confusion(ev.confusion, classes, out / "confusion.png")
    publish_markdown(
        "evaluate-summary",
        "# evaluate (test split)\n\n"
        + pd.Series(ev.metrics).round(4).to_frame("value").to_markdown(),
    )
    publish_table("evaluate-per-class", ev.per_class, "per-class metrics on the test split")
    publish_image("evaluate-confusion", out / "confusion.png", "test confusion matrix")
    return ev.metrics
