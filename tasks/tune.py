"""Optuna search over the train recipe (lr, weight decay, frozen epochs).

Each trial is a short `fit` reporting its validation metric per epoch to a
MedianPruner; the study lives in an RDB (SQLite file by default), so a
search can be inspected with optuna-dashboard or continued from several
processes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd

from params import TrainParams, TuneParams
from tasks.train import EpochMetrics, TrainData, fit

STUDY_NAME = "visiontune"
# the train params the search explores; best_params.yaml carries exactly these
TUNED_KEYS = ("lr", "weight_decay", "freeze_epochs")


def storage_url(params: TuneParams, out_dir: Path) -> str:
    return params.storage or f"sqlite:///{(out_dir / 'study.db').as_posix()}"


def trial_params(trial: optuna.Trial, tune: TuneParams, base: TrainParams) -> TrainParams:
    epochs = tune.epochs
    freeze_high = min(tune.freeze_epochs.high, epochs)
    return base.model_copy(
        update={
            "lr": trial.suggest_float("lr", tune.lr.low, tune.lr.high, log=tune.lr.log),
            "weight_decay": trial.suggest_float(
                "weight_decay",
                tune.weight_decay.low,
                tune.weight_decay.high,
                log=tune.weight_decay.log,
            ),
            "freeze_epochs": trial.suggest_int(
                "freeze_epochs", min(tune.freeze_epochs.low, freeze_high), freeze_high
            ),
            "epochs": epochs,
            "patience": epochs,
        }
    )


def metric_of(m: EpochMetrics, metric: str) -> float:
    value = m.val_accuracy if metric == "val_accuracy" else m.val_loss
    if value is None:
        raise ValueError("tuning needs a validation split: set split.val > 0")
    return value


def run_study(
    tune: TuneParams,
    base: TrainParams,
    data: TrainData,
    out_dir: Path,
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out_dir.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if tune.metric == "val_accuracy" else "minimize"
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=storage_url(tune, out_dir),
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=2, n_warmup_steps=tune.pruner_warmup_epochs
        ),
        load_if_exists=True,
    )

    def objective(trial: optuna.Trial) -> float:
        params = trial_params(trial, tune, base)
        best: list[float] = []

        def report(m: EpochMetrics) -> None:
            value = metric_of(m, tune.metric)
            best.append(value)
            trial.report(value, m.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {m.epoch + 1}")

        fit(params, data, on_epoch=report, show_progress=False)
        return max(best) if direction == "maximize" else min(best)

    callbacks = [lambda _study, trial: on_trial(trial)] if on_trial else None
    study.optimize(objective, n_trials=tune.n_trials, timeout=tune.timeout, callbacks=callbacks)
    return study


def best_train_params(study: optuna.Study | None, base: TrainParams) -> TrainParams:
    """The train params with the best trial's values; train.yaml unchanged with no study."""
    completed = (
        [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE] if study else []
    )
    if not completed:
        return base
    return base.model_copy(update=study.best_params)


def apply_best_params(best_params_yaml: Path, train: TrainParams) -> TrainParams:
    """train.yaml overlaid with the tune stage's best values."""
    import yaml

    best = yaml.safe_load(best_params_yaml.read_text())
    return train.model_copy(update={k: best[k] for k in TUNED_KEYS if k in best})


def trials_table(study: optuna.Study) -> pd.DataFrame:
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    return frame
