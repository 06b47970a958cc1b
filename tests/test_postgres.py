"""Distributed hyperparameter search on a real PostgreSQL server (127.0.0.1, temp dir).

Worker processes (`visiontune tune --worker`) and Dask workers (prefect-dask) share one
Optuna study; a worker killed with SIGKILL mid-trial costs only that trial.
"""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from flows.tune import run_search
from params import TrainParams, TuneParams
from tasks.tune import chosen_trial, make_storage, open_study
from tests.images import write_image_folder
from tests.processes import start
from tests.project import TINY_PARAMS, make_project
from tests.servers import postgres_server
from tests.training import tiny_train_data

FINISHED = ("COMPLETE", "PRUNED")


@pytest.fixture(scope="module")
def postgres():
    from flows.project.server import free_port

    with postgres_server(free_port(15432)) as url:
        yield url


def test_a_trial_killed_before_its_first_heartbeat_is_failed(postgres, tmp_path):
    tune = TuneParams(storage=postgres, heartbeat_interval=1, grace_period=2, max_retry=0)
    plain = optuna.storages.RDBStorage(postgres, heartbeat_interval=1, grace_period=2)
    ours = open_study(tune, make_storage(tune, tmp_path), "never-beat")
    theirs = optuna.load_study(study_name="never-beat", storage=plain)
    ours.ask()  # RUNNING, and no heartbeat ever: what a kill right after the start leaves
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(theirs)  # Optuna alone never fails it
    assert [t.state for t in theirs.get_trials()] == [TrialState.RUNNING]
    optuna.storages.fail_stale_trials(ours)
    assert [t.state for t in ours.get_trials()] == [TrialState.FAIL]


def _trials(url: str) -> list[optuna.trial.FrozenTrial]:
    names = [n for n in optuna.get_all_study_names(url) if n.startswith("visiontune-")]
    return [t for n in names for t in optuna.load_study(study_name=n, storage=url).trials]


def _running_in(url: str, pid: int) -> list[int]:
    return [
        t.number
        for t in _trials(url)
        if t.state == TrialState.RUNNING and t.user_attrs.get("worker", "").endswith(f":{pid}")
    ]


@pytest.mark.e2e
def test_two_workers_one_killed_mid_trial_finish_the_budget_exactly(
    postgres, tmp_path, prefect_server
):
    from flows.collect import run_collect
    from flows.pipeline import pipeline_flow, run_stage
    from flows.project import Project

    source = tmp_path / "source"
    write_image_folder(source, per_class=8)
    tune = {
        **TINY_PARAMS["tune"],
        "n_trials": 4,
        "epochs": 2,
        "storage": postgres,
        "heartbeat_interval": 1,
        "grace_period": 3,
    }
    project = make_project(tmp_path / "project", {**TINY_PARAMS, "tune": tune})
    run_collect("folder", str(source), str(project))
    pipeline_flow(str(project), until="augment")  # what a worker machine gets by `dvc pull`

    workers = [start("visiontune", "tune", "--worker", cwd=project) for _ in range(2)]
    victim, survivor = workers
    try:
        deadline = time.monotonic() + 240
        while not (killed := _running_in(postgres, victim.pid)):
            assert victim.poll() is None, "the worker ended before it ran a trial"
            assert time.monotonic() < deadline, "no trial ran within 240 s"
            time.sleep(0.2)
        os.killpg(victim.pid, signal.SIGKILL)  # mid-trial: RUNNING, beating
        assert victim.wait(timeout=30) == -signal.SIGKILL
        assert survivor.wait(timeout=300) == 0
    finally:
        for proc in workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    trials = _trials(postgres)
    states = {t.number: t.state.name for t in trials}
    assert sum(s in FINISHED for s in states.values()) == 4, states
    assert len(states) == len(trials)  # no trial number twice
    assert states[killed[0]] == "FAIL", states
    best_file = project / "artifacts" / "tune" / "best_params.yaml"
    assert not best_file.exists()  # workers write nothing

    run_stage(Project(project), "tune")  # the stage: the budget is met, it only reports
    assert len(_trials(postgres)) == len(trials)
    best = yaml.safe_load(best_file.read_text())
    study = optuna.load_study(study_name=best["study"], storage=postgres)
    chosen = chosen_trial(study, Project(project).params("tune"))
    assert best["best_trial"] == chosen.number
    assert best["params"] == chosen.params
    assert best["trials"]["FAIL"] >= 1


@pytest.mark.e2e
def test_trials_on_a_dask_cluster_share_the_postgres_study(postgres, tmp_path, prefect_server):
    data = tiny_train_data(tmp_path, per_class=6)
    base = TrainParams(epochs=1, freeze_epochs=0, batch_size=8, device="cpu")
    tune = TuneParams(
        n_trials=2, n_jobs=2, epochs=1, parallel="dask", storage=postgres, seed=3
    )  # no dask_address: a LocalCluster of 2 one-thread worker processes
    study = run_search(tune, base, data, tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) == 2
    workers = {t.user_attrs["worker"] for t in done}
    assert f":{os.getpid()}" not in " ".join(workers)  # ran in Dask's processes, not here
