"""The tune stage's flow: an Optuna search whose best values the train stage uses."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
from optuna.trial import TrialState
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.inputs import train_data
from flows.naming import stage_run_name
from flows.project import Project
from flows.report import ProgressArtifact, publish_image, publish_markdown, publish_table
from params import TrainParams, TuneParams
from tasks.files import fresh_dir, write_csv, write_json, write_yaml
from tasks.train import TrainData
from tasks.tune import (
    STUDY_DIR,
    best_record,
    finished_trials,
    for_data,
    make_storage,
    open_study,
    passthrough_record,
    run_trial,
    save_plots,
    study_name,
    trials_table,
)

# one trial as a Prefect task run: the UI shows each trial, the runner decides where it runs
trial_task = task(name="trial", cache_policy=NO_CACHE, task_run_name="trial-slot-{slot}")(run_trial)


def search_parallelism(tune: TuneParams) -> tuple[object, int | None]:
    """(Prefect task runner, torch threads per trial) for `n_jobs` trials at once.

    Concurrent trials on one machine split its cores: two trainings that each use
    every core run many times slower than one after the other.
    """
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    threads = tune.torch_threads
    if threads is None and tune.n_jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // tune.n_jobs)
    if tune.parallel == "dask":
        from prefect_dask import DaskTaskRunner

        if tune.dask_address:
            return DaskTaskRunner(address=tune.dask_address), threads
        cluster = {"n_workers": tune.n_jobs, "threads_per_worker": 1, "dashboard_address": None}
        return DaskTaskRunner(cluster_kwargs=cluster), threads
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
    """Run trials as Prefect task runs, `n_jobs` at a time, until the budget is met.

    Other processes (`visiontune tune --worker`) may pull trials of the same study
    at the same time: while their RUNNING trials hold the rest of the budget this
    waits, failing the ones that stop beating, until `n_trials` have finished.
    """
    from prefect.futures import as_completed

    tune, base = for_data(tune, base, data)
    name = study_name(tune, base, data)
    study = open_study(tune, make_storage(tune, out_dir), name)
    optuna.storages.fail_stale_trials(study)
    deadline = None if tune.timeout is None else time.time() + tune.timeout
    runner, threads = search_parallelism(tune)
    attempts, max_attempts = 0, tune.n_trials * (tune.max_retry + 1) + tune.n_jobs
    slot = os.getpid() % 1000 * 1000  # workers on one study draw different startup points
    with runner:  # type: ignore[attr-defined]
        while (missing := tune.n_trials - finished_trials(study)) > 0 and attempts < max_attempts:
            if deadline is not None and time.time() >= deadline:
                break
            futures = []
            for _ in range(min(missing, tune.n_jobs)):
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
            ran = 0
            for future in as_completed(futures):
                result = future.result()
                if result:
                    ran += 1
                    if on_trial:
                        on_trial(result, finished_trials(study))
            attempts += ran
            if not ran:  # the budget is held by other workers' RUNNING trials: wait for them
                time.sleep(tune.heartbeat_interval)
                optuna.storages.fail_stale_trials(study)
    optuna.storages.fail_stale_trials(study)
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        states = pd.Series([t.state.name for t in study.trials]).value_counts().to_dict()
        raise RuntimeError(f"no trial completed (trial states: {states}); see the flow's logs")
    return study


@flow(name="tune", flow_run_name=stage_run_name("tune"), log_prints=True)
def tune_flow(params: TuneParams, train: TrainParams, root: str = ".") -> dict:
    project = Project(Path(root))
    out = project.artifacts("tune")
    fresh_dir(out, keep=(STUDY_DIR,))  # the study stays, so a killed search resumes
    (out / STUDY_DIR).mkdir(exist_ok=True)
    plots = out / "plots"
    plots.mkdir()
    log = get_run_logger()
    if params.n_trials == 0:
        record = passthrough_record(params, train)
        write_csv(pd.DataFrame(columns=["number", "value", "state"]), out / "trials.csv")
        outcome = "no search (n_trials: 0), train.yaml's values pass through"
    else:
        progress = ProgressArtifact("tune-progress", "trials")

        def on_trial(result: dict, finished: int) -> None:
            log.info(
                "trial %d %s value=%s params=%s",
                result["number"],
                result["state"],
                result["value"],
                result["params"],
            )
            progress(finished, params.n_trials)

        data = train_data(project)
        params, train = for_data(params, train, data)
        study = run_search(params, train, data, out, on_trial=on_trial)
        record = best_record(study, params)
        table = trials_table(study)
        write_csv(table, out / "trials.csv")
        publish_table("tune-trials", table, f"Optuna trials of {study.study_name}")
        for png in save_plots(study, plots):
            publish_image(f"tune-{png.stem}", png, f"Optuna {png.stem}")
        log.info(
            "chosen: trial %s, %s=%.4f with %s",
            record["best_trial"],
            params.metric,
            record[f"best_{params.metric}"],
            record["params"],
        )
        if "kept_start_point" in record:
            log.info("kept train.yaml's values: %s", record["kept_start_point"])
        chosen = (
            "kept train.yaml's values"
            if "kept_start_point" in record
            else f"chose trial {record['best_trial']}"
        )
        outcome = f"{len(table)} trial(s), {chosen}"
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
    log.info("tune: %s; train gets %s", outcome, record["params"])
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

    study = run_search(params, train, train_data(project), project.artifacts("tune"), on_trial)
    return {"study": study.study_name, "trials_run": len(ran), "finished": finished_trials(study)}
