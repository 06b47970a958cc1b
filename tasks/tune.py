"""Optuna search over train.yaml keys: storage, study, one trial, the records it leaves.

flows/tune.py runs the trials as Prefect task runs (threads, processes or Dask).

The study lives in an RDB (SQLite under artifacts/tune/study/ by default, any
Optuna RDB URL such as PostgreSQL, or a journal file), named after a hash of
the search config, the train params and the data. So a search that was killed
resumes where it stopped: finished trials are kept, trials left RUNNING stop
sending heartbeats and are failed (and retried) after `grace_period`, and the
study continues until `n_trials` trials have finished (complete or pruned).

Several processes or machines can share one study (`storage: postgresql://…`):
each trial first claims one of the budget's `n_trials` places under a lock
(a PostgreSQL advisory lock, else a file lock beside the study), so however
many workers pull trials, exactly `n_trials` finish.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import yaml
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from params import TrainParams, TuneParams
from params.schema import CategoricalDim, FloatDim, IntDim
from tasks.label_task import metric_direction
from tasks.secrets import expand_env
from tasks.train import EpochMetrics, TrainData, fit, resolved

# heartbeats and stale-trial failing are "experimental" in Optuna 5; we rely on them knowingly
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

STUDY_DIR = "study"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def for_data(
    tune: TuneParams, base: TrainParams, data: TrainData
) -> tuple[TuneParams, TrainParams]:
    """The `auto` metrics as the data's kind means them (val_accuracy or val_map), so that
    study names, directions and records name the metric itself."""
    metric = data.task.resolve(tune.metric)
    return tune.model_copy(update={"metric": metric}), resolved(base, data)


def study_name(tune: TuneParams, base: TrainParams, data: TrainData) -> str:
    """Same search, same recipe, same data → same study; budgets and parallelism may change."""
    tune, base = for_data(tune, base, data)
    search = tune.model_dump(
        mode="json",
        include={"epochs", "metric", "seed", "sampler", "pruner", "pruner_warmup_epochs", "space"},
    )
    recipe = base.model_dump(mode="json", exclude={"refit"})  # trials never refit
    key = json.dumps([search, recipe, data.fingerprint()], sort_keys=True)
    return "visiontune-" + hashlib.sha256(key.encode()).hexdigest()[:12]


class RDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage, whose stale-trial check also fails trials that never beat.

    Optuna only fails a RUNNING trial whose last heartbeat is older than the grace
    period; a trial killed between its start and its first heartbeat has none and
    stayed RUNNING for ever. A trial's heartbeat thread beats as soon as it starts,
    so a RUNNING trial older than the grace period without one is dead too.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        stale = super()._get_stale_trial_ids(study_id)
        grace = self.grace_period or 2 * (self.heartbeat_interval or 1)
        started_before = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=grace)
        with _create_scoped_session(self.scoped_session) as session:
            silent = (
                session.query(models.TrialModel.trial_id)
                .outerjoin(models.TrialHeartbeatModel)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(models.TrialHeartbeatModel.trial_heartbeat_id.is_(None))
                .filter(models.TrialModel._datetime_start_utc < started_before)  # stored in UTC
                .all()
            )
        return stale + [trial_id for (trial_id,) in silent if trial_id not in stale]


def storage_url(tune: TuneParams) -> str | None:
    """tune.storage with its `${VAR}` references expanded: done here, where it is used, so the
    expanded text (a password) is in no params object, flow parameter, log or dvc.lock."""
    return expand_env(tune.storage, "tune.yaml: storage") if tune.storage else None


def make_storage(tune: TuneParams, out_dir: Path) -> optuna.storages.BaseStorage:
    retry = _retry_under_lock(tune, out_dir)
    url = storage_url(tune)
    if url and url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend

        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if url is None:
        (out_dir / STUDY_DIR).mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(out_dir / STUDY_DIR / 'study.db').as_posix()}"
    return RDBStorage(
        url,
        heartbeat_interval=tune.heartbeat_interval,
        grace_period=tune.grace_period,
        heartbeat_stale_trial_callback=retry,
    )


def _retry_under_lock(tune: TuneParams, out_dir: Path) -> Callable:
    """Re-queue a stale trial (up to max_retry times) under the budget lock: see claim_trial."""
    retry = RetryHeartbeatStaleTrialCallback(max_retry=tune.max_retry)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        with study_lock(tune, out_dir, study.study_name):
            retry(study, trial)

    return callback


@functools.cache
def _lock_engine(url: str):  # one per process and URL; NullPool: no idle connections kept
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    return sqlalchemy.create_engine(url, poolclass=NullPool)


@contextlib.contextmanager
def study_lock(tune: TuneParams, out_dir: Path, name: str) -> Iterator[None]:
    """Mutual exclusion between every process that works on study `name`.

    PostgreSQL storage: an advisory lock on the server (processes on any machine).
    Otherwise: an flock on a file beside the study (processes on this machine).
    """
    url = storage_url(tune) or ""
    if url.startswith(("postgresql:", "postgresql+", "postgres:")):
        import sqlalchemy

        key = int(hashlib.sha256(name.encode()).hexdigest()[:15], 16)  # fits a bigint
        with _lock_engine(url).connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
        return
    if url.startswith("journal:"):
        lock_path = Path(url.removeprefix("journal:") + ".lock")
    else:
        lock_path = out_dir / STUDY_DIR / f"{name}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


CLAIM = "visiontune_claimed_at"  # user attr of a WAITING trial some process is about to run
START = "visiontune_start_point"  # user attr of trial 0: train.yaml's own values
HITS = "visiontune_val_hits"  # user attr: how well the trial's best epoch did on each val image


def pack_hits(hits: np.ndarray) -> dict:
    """Per-image validation results as a JSON-able user attr: hits as 1 bit per image
    (125 kB per 1M images); scores (multi-label ranking precision) as float16."""
    if hits.dtype != bool:
        values = base64.b64encode(hits.astype(np.float16).tobytes()).decode()
        return {"n": int(hits.size), "float16": values}
    bits = base64.b64encode(np.packbits(hits.astype(bool)).tobytes()).decode()
    return {"n": int(hits.size), "bits": bits}


def unpack_hits(attr: dict) -> np.ndarray:
    if "float16" in attr:
        return np.frombuffer(base64.b64decode(attr["float16"]), dtype=np.float16).astype(float)
    packed = np.frombuffer(base64.b64decode(attr["bits"]), dtype=np.uint8)
    return np.unpackbits(packed, count=attr["n"]).astype(bool)


def trial_epochs(tune: TuneParams, base: TrainParams) -> int:
    return tune.epochs or base.epochs


def start_point(tune: TuneParams, base: TrainParams) -> dict:
    """train.yaml's own values of the searched keys (those inside the space): trial 0, so
    a search is never worse on validation than the recipe it starts from."""
    point = {}
    short = trial_base(tune, base)
    for key, dim in tune.space.items():
        value = short.head_epochs if key == "freeze_epochs" else getattr(base, key)
        match dim:
            case CategoricalDim() if value in dim.choices:
                point[key] = value
            case FloatDim() | IntDim() if isinstance(value, int | float) and (
                dim.low <= value <= dim.high
            ):
                point[key] = value
    return point


def claim_trial(
    study: optuna.Study, tune: TuneParams, out_dir: Path, first: dict | None = None
) -> bool:
    """Reserve one of the budget's `n_trials` places; False when all are taken.

    Taken: finished and RUNNING trials, and WAITING trials claimed in the last
    grace period (a claimant pops a waiting trial right after). A claim takes a
    free WAITING trial (a re-queued stale one) or enqueues a new one; the caller's
    `optimize` then pops a waiting trial, so it never creates one past the budget.
    The study's very first trial is enqueued with the values `first`.
    """
    with study_lock(tune, out_dir, study.study_name):
        now = time.time()
        trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]

        def claimed(t: FrozenTrial) -> bool:
            return now - t.user_attrs.get(CLAIM, float("-inf")) < tune.grace_period

        taken = sum(t.state in (*FINISHED, TrialState.RUNNING) for t in trials)
        taken += sum(claimed(t) for t in waiting)
        if taken >= tune.n_trials:
            return False
        free = [t for t in waiting if not claimed(t)]
        if free:
            study._storage.set_trial_user_attr(free[0]._trial_id, CLAIM, now)
        else:
            if trials:
                study.enqueue_trial({}, user_attrs={CLAIM: now})
            else:
                study.enqueue_trial(first or {}, user_attrs={CLAIM: now, START: True})
        return True


def _pruner(tune: TuneParams) -> optuna.pruners.BasePruner:
    match tune.pruner:
        case "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=2, n_warmup_steps=tune.pruner_warmup_epochs
            )
        case "hyperband":
            most = tune.epochs or "auto"  # auto: the first trial's epochs (train.yaml's)
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=most)
    return optuna.pruners.NopPruner()


def make_sampler(tune: TuneParams, name: str, draw: int = 0) -> optuna.samplers.BaseSampler:
    """QMC (scrambled Sobol) for small budgets: a few trials spread over the whole space,
    where TPE would only be drawing its random start-up points. TPE past 10 trials.

    Seeded by the study name (search, recipe and data): another dataset draws other
    trials. `draw` gives every fresh sampler of one study its own TPE stream; QMC keeps
    its place in the sequence in the study itself, so any process continues it.
    """
    seed = (int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) + tune.seed) % 2**32
    sampler = tune.sampler
    if sampler == "auto":
        sampler = "qmc" if tune.n_trials <= 10 else "tpe"
    if sampler == "qmc":
        return optuna.samplers.QMCSampler(scramble=True, seed=seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(seed=(seed + draw) % 2**32)


def open_study(tune: TuneParams, storage: optuna.storages.BaseStorage, name: str) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        study_name=name,
        storage=storage,
        direction=metric_direction(tune.metric),
        sampler=make_sampler(tune, name),
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
    short = trial_base(tune, base)
    freeze = update.get("freeze_epochs", short.freeze_epochs)
    if freeze != "auto":
        update["freeze_epochs"] = min(freeze, short.epochs)
    return short.with_values(update)


def trial_base(tune: TuneParams, base: TrainParams) -> TrainParams:
    """train.yaml at the trials' epochs, every one of them run (trials compare their curves)."""
    epochs = trial_epochs(tune, base)
    return base.model_copy(update={"epochs": epochs, "patience": epochs})


def metric_of(m: EpochMetrics, metric: str) -> float:
    value = getattr(m, metric)
    if value is None:
        raise ValueError("tuning needs a validation split: set split.val > 0")
    return value


def objective(
    tune: TuneParams, base: TrainParams, data: TrainData
) -> Callable[[optuna.Trial], float]:
    tune, base = for_data(tune, base, data)
    maximize = metric_direction(tune.metric) == "maximize"

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")  # who ran it
        params = trial_params(trial, tune, base)
        values: list[float] = []
        hits: list[np.ndarray] = []

        def report(m: EpochMetrics) -> None:
            value = metric_of(m, tune.metric)
            values.append(value)
            trial.report(value, m.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {m.epoch + 1}")

        fit(
            params,
            data,
            on_epoch=report,
            show_progress=False,
            on_validation=lambda _epoch, h: hits.append(h),
        )
        best = values.index(max(values) if maximize else min(values))
        if best < len(hits):
            trial.set_user_attr(HITS, pack_hits(hits[best]))
        return values[best]

    return run


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def run_trial(
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
    # every call builds a fresh sampler: a TPE one seeded per slot and study size, or
    # each would draw the same "random" startup point
    existing = len(study.get_trials(deepcopy=False))
    study.sampler = make_sampler(tune, name, draw=7919 * existing + 104729 * slot)
    remaining = None if deadline is None else deadline - time.time()
    if remaining is not None and remaining <= 0:
        return None
    if not claim_trial(study, tune, out_dir, first=start_point(tune, base)):
        return None
    ran: list[FrozenTrial] = []
    study.optimize(  # pops the waiting trial claim_trial made or took: never a new one
        objective(tune, base, data),
        n_trials=1,
        timeout=remaining,
        catch=(RuntimeError, ValueError, FloatingPointError),
        callbacks=[lambda _study, trial: ran.append(trial)],
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


def sign_test(best: FrozenTrial, start: FrozenTrial) -> float | None:
    """One-sided p-value that `best` gets more validation images right than `start`: an
    exact binomial test on the images exactly one of them gets right (McNemar's test);
    for per-image scores (multi-label), a Wilcoxon signed-rank test on their differences.
    None when either trial has no per-image record (an older study) or they differ."""
    if HITS not in best.user_attrs or HITS not in start.user_attrs:
        return None
    ours, theirs = unpack_hits(best.user_attrs[HITS]), unpack_hits(start.user_attrs[HITS])
    if ours.size != theirs.size:
        return None
    from scipy.stats import binomtest, wilcoxon

    if ours.dtype != bool:
        if not np.any(ours != theirs):
            return 1.0
        return float(wilcoxon(ours, theirs, alternative="greater").pvalue)

    wins, losses = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
    if wins + losses == 0:
        return 1.0
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue)


@dataclass
class Choice:
    trial: FrozenTrial
    best: FrozenTrial  # the best by value; `trial` is trial 0 when the gain did not hold up
    start: FrozenTrial | None
    p_value: float | None = None

    @property
    def kept_start(self) -> bool:
        return self.trial.number != self.best.number


def choose_trial(study: optuna.Study, tune: TuneParams) -> Choice:
    """The best trial, unless its lead over trial 0 (train.yaml's values) is noise.

    The best of a few trials on a small validation split is often best by a couple of
    images: in the recipe benchmark such picks did worse on the test split than the
    defaults they displaced. So the best trial must beat trial 0 by `min_gain` and, image
    by image, pass a sign test at `confidence`; otherwise train.yaml's values stay.
    """
    best = study.best_trial
    start = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.user_attrs.get(START)
    ]
    if not start or best.number == start[0].number:
        return Choice(best, best, start[0] if start else None)
    sign = 1 if metric_direction(tune.metric) == "maximize" else -1
    gain = sign * (best.value - start[0].value)  # type: ignore[operator]
    p_value = sign_test(best, start[0]) if tune.confidence > 0 else None
    holds = gain >= tune.min_gain and (p_value is None or p_value <= 1 - tune.confidence)
    return Choice(best if holds else start[0], best, start[0], p_value)


def chosen_trial(study: optuna.Study, tune: TuneParams) -> FrozenTrial:
    return choose_trial(study, tune).trial


SEARCHED = "optuna"  # best_params.yaml `source` when a search chose the values


def best_record(study: optuna.Study, tune: TuneParams) -> dict:
    counts = pd.Series([t.state.name for t in study.trials], dtype=str).value_counts()
    choice = choose_trial(study, tune)
    chosen = choice.trial
    record = {
        "source": SEARCHED,
        "study": study.study_name,
        "params": dict(chosen.params),
        f"best_{tune.metric}": chosen.value,
        "best_trial": chosen.number,
        "trials": {state: int(n) for state, n in counts.items()},
    }
    if choice.p_value is not None:
        record["sign_test_p"] = round(choice.p_value, 4)
    if choice.kept_start:
        test = "" if choice.p_value is None else f", sign test p = {choice.p_value:.3f}"
        record["kept_start_point"] = (
            f"trial {choice.best.number} scored {choice.best.value:.4f}{test}: not enough "
            f"(min_gain {tune.min_gain}, confidence {tune.confidence}) to replace "
            f"train.yaml's values (trial {chosen.number})"
        )
    return record


def passthrough_record(tune: TuneParams, base: TrainParams) -> dict:
    """With n_trials: 0 the train.yaml values pass through unchanged."""
    return {
        "source": "params/train.yaml (n_trials: 0)",
        "params": {k: getattr(base, k) for k in tune.space},
    }


def apply_best_params(best_params_yaml: Path, train: TrainParams) -> TrainParams:
    """train.yaml overlaid with the tune stage's best values."""
    return overlaid(yaml.safe_load(best_params_yaml.read_text()) or {}, train)


def overlaid(record: dict, train: TrainParams) -> TrainParams:
    return train.with_values(record.get("params", {}))


@dataclass
class FinalTraining:
    params: TrainParams  # what fit gets
    data: TrainData
    refit: bool
    overridden: str | None  # the train.yaml values the search replaced, in one line


def final_training(best_params_yaml: Path, train: TrainParams, data: TrainData) -> FinalTraining:
    """What the train stage fits: train.yaml with the search's values and, when it refits
    (`refit: auto` after a search), the val images moved into train. The trials judged
    the recipe on val already, so the final model may learn from those images too
    (scikit-learn's `refit`, AutoGluon's `refit_full`); with nothing left to validate
    on, every epoch runs (no early stopping) and the training metric picks the kept one."""
    record = yaml.safe_load(best_params_yaml.read_text()) or {}
    tuned = overlaid(record, train)
    overridden = searched_overrides(data.task.recipe(train), data.task.recipe(tuned))
    searched = record.get("source") == SEARCHED
    # multi-label models choose their thresholds on val: `auto` keeps it for that
    refit = tuned.refit == "on" or (tuned.refit == "auto" and searched and data.task.refits)
    if not refit:
        return FinalTraining(tuned, data, False, overridden)
    every_epoch = tuned.model_copy(update={"patience": tuned.epochs})
    return FinalTraining(every_epoch, data.with_val_in_train(), True, overridden)


def searched_overrides(train: TrainParams, tuned: TrainParams) -> str | None:
    """One line naming the train.yaml values the search replaced, so that an edit to a
    searched key (`dvc exp run -S params/train.yaml:lr=…`) is never silently ignored."""
    changed = [
        f"{key} {getattr(train, key)!r} → {value!r}"
        for key, value in tuned.model_dump().items()
        if value != getattr(train, key)
        and key != "multi_label"
        and not (key == "freeze_epochs" and tuned.head_epochs == train.head_epochs)
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
    from optuna.visualization import matplotlib as ovm

    from tasks.figures import pyplot, save_figure

    pyplot()  # the Agg backend before optuna draws

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
        save_figure(fig, out_dir / file_name, dpi=90)
        made.append(out_dir / file_name)
    return made
