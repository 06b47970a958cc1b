"""The tune stage's flow: an Optuna search whose best values the train stage uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.inputs import train_data
from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_image, publish_markdown, publish_table
from params import TrainParams, TuneParams
from tasks.files import write_csv, write_json, write_yaml
from tasks.tune import (
    STUDY_DIR,
    best_record,
    finished_trials,
    passthrough_record,
    run_search,
    save_plots,
    trials_table,
)


def _clear_outputs(out: Path) -> None:
    """Remove last run's outputs but keep the study, so a killed search resumes."""
    out.mkdir(parents=True, exist_ok=True)
    for path in out.iterdir():
        if path.name != STUDY_DIR:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    (out / STUDY_DIR).mkdir(exist_ok=True)


@flow(name="tune", flow_run_name=stage_run_name("tune"), log_prints=True)
def tune_flow(params: TuneParams, train: TrainParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = project.artifacts("tune")
    _clear_outputs(out)
    plots = out / "plots"
    plots.mkdir()
    if params.n_trials == 0:
        record = passthrough_record(params, train)
        write_csv(pd.DataFrame(columns=["number", "value", "state"]), out / "trials.csv")
    else:
        log = get_run_logger()
        progress = create_progress_artifact(0.0, key="tune-progress", description="trials")

        def on_trial(result: dict, finished: int) -> None:
            log.info(
                "trial %d %s value=%s params=%s",
                result["number"],
                result["state"],
                result["value"],
                result["params"],
            )
            update_progress_artifact(progress, min(100.0, 100.0 * finished / params.n_trials))

        study = run_search(params, train, train_data(project), out, on_trial=on_trial)
        record = best_record(study, params)
        table = trials_table(study)
        write_csv(table, out / "trials.csv")
        publish_table("tune-trials", table, f"Optuna trials of {study.study_name}")
        for png in save_plots(study, plots):
            publish_image(f"tune-{png.stem}", png, f"Optuna {png.stem}")
        log.info("best %s=%.4f with %s", params.metric, study.best_value, study.best_params)
    write_yaml(record, out / "best_params.yaml")
    write_json(
        {k: v for k, v in record.items() if isinstance(v, int | float)}, out / "summary.json"
    )
    publish_markdown(
        "tune-summary",
        "# tune\n\n"
        + pd.Series({k: v for k, v in record.items() if k != "params"})
        .to_frame("value")
        .to_markdown()
        + "\n\n**params for train**\n\n"
        + pd.Series(record["params"]).to_frame("value").to_markdown(),
    )
    return record


@flow(name="tune-worker", log_prints=True)
def tune_worker_flow(params: TuneParams, train: TrainParams, root: str = ".") -> dict:
    """Pull trials of the shared study until `n_trials` have finished; writes no outputs.

    Start as many as you like, on this machine or others that reach the same storage
    (`storage: postgresql://…`) and hold the same data (`dvc pull`); the tune stage
    (`visiontune tune`, `dvc repro`) then writes best_params.yaml once.
    """
    log = get_run_logger()
    if params.n_trials == 0:
        log.info("tune.n_trials is 0: nothing to search")
        return {"trials_run": 0}
    project = Project(Path(root))
    ran: list[dict] = []

    def on_trial(result: dict, finished: int) -> None:
        ran.append(result)
        log.info(
            "trial %d %s value=%s (%d/%d finished)",
            result["number"],
            result["state"],
            result["value"],
            finished,
            params.n_trials,
        )

    study = run_search(params, train, project.train_data(), project.artifacts("tune"), on_trial)
    return {"study": study.study_name, "trials_run": len(ran), "finished": finished_trials(study)}
