"""The train stage's flow: fine-tune with the tuned params, log curves, keep the best model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from dvclive import Live
from prefect import flow, get_run_logger

from flows.inputs import train_data
from flows.naming import stage_run_name
from flows.project import Project
from flows.report import ProgressArtifact, publish_image, publish_markdown
from params import TrainParams
from tasks.curves import plot_curves
from tasks.files import write_csv
from tasks.inference import MODEL
from tasks.train import CHECKPOINT, EpochMetrics, fit, load_checkpoint, run_fingerprint
from tasks.tune import final_training

REFIT_NOTE = (
    "refit: the val images train too (the search's trials judged the recipe on them), "
    "so every epoch runs and the training metric picks the kept one (refit: off in "
    "params/train.yaml to keep them for validation)"
)


def train_worker(params: TrainParams, root: str = ".") -> None:
    """A rank > 0 under torchrun: trains its shard in step with rank 0 and writes nothing."""
    project = Project(Path(root))
    best = project.artifacts("tune") / "best_params.yaml"
    final = final_training(best, params, train_data(project))
    fit(final.params, final.data, out_dir=project.artifacts("train"), show_progress=False)


@flow(name="train", flow_run_name=stage_run_name("train"), log_prints=True)
def train_flow(params: TrainParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = project.artifacts("train")
    out.mkdir(parents=True, exist_ok=True)
    best = project.artifacts("tune") / "best_params.yaml"
    final = final_training(best, params, train_data(project))
    params, data, refit, overridden = final.params, final.data, final.refit, final.overridden
    log = get_run_logger()
    trained_on = len(data.part("train"))
    nouns = data.task.nouns
    log.info("training %s on %d %s, %d images", params.model, len(data.classes), nouns, trained_on)
    if overridden:
        log.warning(overridden)
    if refit:
        log.info(REFIT_NOTE)
        if not data.task.refits:
            log.warning(
                "refit: on with multi-label data leaves no val images to choose each label's "
                "threshold: every label uses 0.5 (refit: auto or off keeps them)"
            )
    progress = ProgressArtifact("train-progress", "epochs")
    checkpoint = load_checkpoint(out / CHECKPOINT, run_fingerprint(params, data))
    resume = checkpoint is not None
    if checkpoint is not None:
        log.info("resuming from the checkpoint after epoch %d", checkpoint["epoch"] + 1)
    with Live(
        dir=str(out / "live"), resume=resume, dvcyaml=None, save_dvc_exp=False, report=None
    ) as live:

        def on_epoch(m: EpochMetrics) -> None:
            for key, value in m.record().items():
                if key not in ("epoch", "frozen") and value is not None:  # loss, accuracy, lr…
                    live.log_metric(key, value)
            live.next_step()
            log.info(
                "epoch %d/%d (%d backbone stages training) train_loss=%.4f val_loss=%s "
                "val_accuracy=%s%s, %.0f img/s, %.0f%% of the time waiting for data",
                m.epoch + 1,
                params.epochs,
                m.trainable_stages,
                m.train_loss,
                f"{m.val_loss:.4f}" if m.val_loss is not None else "-",
                f"{m.val_accuracy:.4f}" if m.val_accuracy is not None else "-",
                f" val_map={m.val_map:.4f}" if m.val_map is not None else "",
                m.images_per_s,
                100 * m.data_wait,
            )
            progress(m.epoch + 1, params.epochs)

        result = fit(params, data, out_dir=out, on_epoch=on_epoch)
    history = pd.DataFrame([m.record() for m in result.history])
    write_csv(history, out / "history.csv")
    plot_curves(history, out / "curves.png")
    best = result.best
    summary = {
        "best_epoch": result.best_epoch + 1,
        "epochs_run": len(history),
        "stopped_early": result.stopped_early,
        "monitor": result.monitor,
        "refit": refit,
        "train_images": trained_on,
        "val_loss": best.val_loss if best else None,
        "val_accuracy": best.val_accuracy if best else None,
    }
    if best and best.val_map is not None:
        summary["val_map"] = best.val_map
    publish_markdown(
        "train-summary",
        f"# train\n\n`{params.model}`, {len(data.classes)} classes\n\n"
        + (f"**{overridden}**\n\n" if overridden else "")
        + (f"{REFIT_NOTE}\n\n" if refit else "")
        + pd.Series(summary).to_frame("value").to_markdown()
        + "\n\n"
        + history.round(4).to_markdown(index=False),
    )
    publish_image("train-curves", out / "curves.png", "training curves")
    kept = f"epoch {summary['best_epoch']} of {summary['epochs_run']} kept"
    if best and best.val_map is not None:
        kept += f" (val mAP {best.val_map:.4f}, val loss {best.val_loss:.4f})"
    elif best and best.val_accuracy is not None:
        kept += f" (val accuracy {best.val_accuracy:.4f}, val loss {best.val_loss:.4f})"
    log.info(
        "train: %s on %d images%s; %s%s → %s",
        params.model,
        trained_on,
        " (train + val: refit)" if refit else "",
        kept,
        ", stopped early" if result.stopped_early else "",
        out / MODEL,
    )
    return summary
