"""The tune stage's flow: an Optuna search whose best values the train stage uses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from flows.project import Project
from params import TrainParams, TuneParams
from tasks.files import fresh_dir, write_csv, write_yaml
from tasks.report import publish_markdown, publish_table
from tasks.tune import TUNED_KEYS


@flow(name="tune", log_prints=True)
def tune_flow(params: TuneParams, train: TrainParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = fresh_dir(project.artifacts("tune"))
    record: dict = {
        "source": "params/train.yaml (n_trials: 0)",
        **{k: getattr(train, k) for k in TUNED_KEYS},
    }
    if params.n_trials > 0:
        from tasks.tune import best_train_params, run_study, trials_table

        log = get_run_logger()
        progress = create_progress_artifact(0.0, key="tune-progress", description="trials")

        def on_trial(trial) -> None:
            log.info(
                "trial %d %s value=%s %s", trial.number, trial.state.name, trial.value, trial.params
            )
            update_progress_artifact(progress, 100.0 * (trial.number + 1) / params.n_trials)

        study = run_study(params, train, project.train_data(), out, on_trial=on_trial)
        tuned = best_train_params(study, train)
        table = trials_table(study)
        write_csv(table, out / "trials.csv")
        publish_table("tune-trials", table, "Optuna trials")
        completed = table[table["state"] == "COMPLETE"]
        record = {
            "source": "optuna",
            **{k: getattr(tuned, k) for k in TUNED_KEYS},
            "trials": len(table),
            "completed": len(completed),
            f"best_{params.metric}": study.best_value if len(completed) else None,
        }
    write_yaml(record, out / "best_params.yaml")
    publish_markdown(
        "tune-summary", "# tune\n\n" + pd.Series(record).to_frame("value").to_markdown()
    )
    return record
