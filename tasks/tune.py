"""Optuna search over train.yaml keys, with trials as Prefect task runs.

The study lives in an RDB (SQLite under artifacts/tune/study/ by default, any
Optuna RDB URL such as PostgreSQL, or a journal file), named after a hash of
the search config, the train params and the data. So a search that was killed
resumes where it stopped: finished trials are kept, trials left RUNNING stop
sending heartbeats and are failed (and retried) after `grace_period`, and the
study continues until `n_trials` trials have finished (complete or pruned).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState
from prefect import task
from prefect.cache_policies import NO_CACHE

from params import TrainParams, TuneParams
from params.schema import CategoricalDim, FloatDim, IntDim
from tasks.train import EpochMetrics, TrainData, fit

# heartbeats and stale-trial failing are "experimental" in Optuna 5; we rely on them knowingly
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDY_DIR = "study"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def study_name(tune: TuneParams, base: TrainParams, data: TrainData) -> str:
    """Same search, same recipe, same data → same study; budgets and parallelism may change."""
    search = tune.model_dump(
        mode="json",
        include={"epochs", "metric", "seed", "pruner", "pruner_warmup_epochs", "space"},
    )
    key = json.dumps([search, base.model_dump(mode="json"), data.fingerprint()], sort_keys=True)
    return "visiontune-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def make_storage(tune: TuneParams, out_dir: Path) -> optuna.storages.BaseStorage:
    retry = RetryHeartbeatStaleTrialCallback(max_retry=tune.max_retry)
    if tune.storage and tune.storage.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(tune.storage.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    url = tune.storage
    if url is None:
        (out_dir / STUDY_DIR).mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(out_dir / STUDY_DIR / 'study.db').as_posix()}"
    return optuna.storages.RDBStorage(
        url,
        heartbeat_interval=tune.heartbeat_interval,
        grace_period=tune.grace_period,
        heartbeat_stale_trial_callback=retry,
    )


def _pruner(tune: TuneParams) -> optuna.pruners.BasePruner:
    match tune.pruner:
        case "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=2, n_warmup_steps=tune.pruner_warmup_epochs
            )
        case "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=tune.epochs)
    return optuna.pruners.NopPruner()


def open_study(tune: TuneParams, storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction="maximize" if tune.metric == "val_accuracy" else "minimize",
        sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=_pruner(tune),
        load_if_exists=True,
    )


def trial_params(trial: optuna.Trial, tune: TuneParams, base: TrainParams) -> TrainParams:
    update: dict = {}
    for key, dim in tune.space.items():
        match dim:
            case FloatDim():
                update[key] = trial.suggest_float(key, dim.low, dim.high, log=dim.log)
            case IntDim():
                update[key] = trial.suggest_int(key, dim.low, dim.high, step=dim.step, log=dim.log)
            case CategoricalDim():
                update[key] = trial.suggest_categorical(key, dim.choices)
    update |= {"epochs": tune.epochs, "patience": tune.epochs}
    update["freeze_epochs"] = min(update.get("freeze_epochs", base.freeze_epochs), tune.epochs)
    return TrainParams.model_validate({**base.model_dump(), **update})


def metric_of(m: EpochMetrics, metric: str) -> float:
    value = m.val_accuracy if metric == "val_accuracy" else m.val_loss
    if value is None:
        raise ValueError("tuning needs a validation split: set split.val > 0")
    return value


def objective(
    tune: TuneParams, base: TrainParams, data: TrainData
) -> Callable[[optuna.Trial], float]:
    maximize = tune.metric == "val_accuracy"

    def run(trial: optuna.Trial) -> float:
        params = trial_params(trial, tune, base)
        values: list[float] = []

        def report(m: EpochMetrics) -> None:
            value = metric_of(m, tune.metric)
            values.append(value)
            trial.report(value, m.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {m.epoch + 1}")

        fit(params, data, on_epoch=report, show_progress=False)
        return max(values) if maximize else min(values)

    return run


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


@task(name="trial", cache_policy=NO_CACHE, task_run_name="trial-slot-{slot}")
def trial_task(
    slot: int,
    tune: TuneParams,
    base: TrainParams,
    data: TrainData,
    out_dir: Path,
    name: str,
    deadline: float | None,
    torch_threads: int | None = None,
) -> dict | None:
    """Run one trial (unless the budget or the deadline is already reached)."""
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    study = open_study(tune, make_storage(tune, out_dir), name)
    if finished_trials(study) >= tune.n_trials:
        return None
    # every call builds a fresh sampler: seed it per slot and study size, or each
    # one would draw the same "random" startup point
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = optuna.samplers.TPESampler(seed=tune.seed + 7919 * existing + 104729 * slot)
    remaining = None if deadline is None else deadline - time.time()
    if remaining is not None and remaining <= 0:
        return None
    ran: list[FrozenTrial] = []
    study.optimize(
        objective(tune, base, data),
        n_trials=1,
        timeout=remaining,
        catch=(RuntimeError, ValueError, FloatingPointError),
        callbacks=[
            MaxTrialsCallback(tune.n_trials, states=FINISHED),
            lambda _study, trial: ran.append(trial),
        ],
    )
    if not ran:
        return None
    trial = ran[0]
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
    }


def search_parallelism(tune: TuneParams) -> tuple[object, int | None]:
    """(Prefect task runner, torch threads per trial) for `n_jobs` trials at once."""
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    threads = max(1, (os.cpu_count() or 1) // tune.n_jobs) if tune.n_jobs > 1 else None
    if tune.parallel == "process":
        return ProcessPoolTaskRunner(max_workers=tune.n_jobs), threads
    return ThreadPoolTaskRunner(max_workers=tune.n_jobs), threads


def run_search(
    tune: TuneParams,
    base: TrainParams,
    data: TrainData,
    out_dir: Path,
    on_trial: Callable[[dict, int], None] | None = None,
) -> optuna.Study:
    """Run trials as Prefect task runs, `n_jobs` at a time, until the budget is met."""
    from prefect.futures import as_completed

    name = study_name(tune, base, data)
    study = open_study(tune, make_storage(tune, out_dir), name)
    optuna.storages.fail_stale_trials(study)
    deadline = None if tune.timeout is None else time.time() + tune.timeout
    runner, threads = search_parallelism(tune)
    attempts, max_attempts = 0, tune.n_trials * (tune.max_retry + 1) + tune.n_jobs
    slot = 0
    with runner:  # type: ignore[attr-defined]
        while (missing := tune.n_trials - finished_trials(study)) > 0 and attempts < max_attempts:
            if deadline is not None and time.time() >= deadline:
                break
            futures = []
            for _ in range(missing):
                parameters = {
                    "slot": slot,
                    "tune": tune,
                    "base": base,
                    "data": data,
                    "out_dir": out_dir,
                    "name": name,
                    "deadline": deadline,
                    "torch_threads": threads,
                }
                futures.append(runner.submit(trial_task, parameters))  # type: ignore[attr-defined]
                slot += 1
            attempts += missing
            for future in as_completed(futures):
                result = future.result()
                if result and on_trial:
                    on_trial(result, finished_trials(study))
    optuna.storages.fail_stale_trials(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
        raise RuntimeError(f"no trial completed (trial states: {states}); see the flow's logs")
    return study


def best_record(study: optuna.Study, tune: TuneParams) -> dict:
    counts = pd.Series([t.state.name for t in study.trials], dtype=str).value_counts()
    return {
        "source": "optuna",
        "study": study.study_name,
        "params": dict(study.best_params),
        f"best_{tune.metric}": study.best_value,
        "best_trial": study.best_trial.number,
        "trials": {state: int(n) for state, n in counts.items()},
    }


def passthrough_record(tune: TuneParams, base: TrainParams) -> dict:
    """With n_trials: 0 the train.yaml values pass through unchanged."""
    return {
        "source": "params/train.yaml (n_trials: 0)",
        "params": {k: getattr(base, k) for k in tune.space},
    }


def apply_best_params(best_params_yaml: Path, train: TrainParams) -> TrainParams:
    """train.yaml overlaid with the tune stage's best values."""
    best = yaml.safe_load(best_params_yaml.read_text())
    return TrainParams.model_validate({**train.model_dump(), **best.get("params", {})})


def searched_overrides(train: TrainParams, tuned: TrainParams) -> str | None:
    """One line naming the train.yaml values the search replaced, so that an edit to a
    searched key (`dvc exp run -S params/train.yaml:lr=…`) is never silently ignored."""
    changed = [
        f"{key} {getattr(train, key)!r} → {value!r}"
        for key, value in tuned.model_dump().items()
        if value != getattr(train, key)
    ]
    if not changed:
        return None
    return (
        "the search (artifacts/tune/best_params.yaml) overrides params/train.yaml: "
        + ", ".join(changed)
        + "; to train with train.yaml's values set n_trials: 0 in params/tune.yaml "
        "or drop those keys from its space"
    )


def trials_table(study: optuna.Study) -> pd.DataFrame:
    frame = study.trials_dataframe(attrs=("number", "value", "params", "state", "duration"))
    if "duration" in frame:
        frame["duration"] = frame["duration"].dt.total_seconds().round(1)
    frame.columns = [c.removeprefix("params_") for c in frame.columns]
    return frame


def save_plots(study: optuna.Study, out_dir: Path) -> list[Path]:
    """Optimisation history, parameter importances and parallel coordinates as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    from tasks.files import atomic_path

    made = []
    plots = {
        "history.png": ovm.plot_optimization_history,
        "importance.png": ovm.plot_param_importances,
        "parallel.png": ovm.plot_parallel_coordinate,
    }
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for file_name, plot in plots.items():
        if file_name != "history.png" and len(complete) < 2:
            continue  # importances and coordinates need at least two finished trials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ax = plot(study)
            except (ValueError, RuntimeError, ZeroDivisionError):
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        fig.set_size_inches(7, 4)
        fig.tight_layout()
        with atomic_path(out_dir / file_name) as tmp:
            fig.savefig(tmp, format="png", dpi=90)
        plt.close(fig)
        made.append(out_dir / file_name)
    return made
