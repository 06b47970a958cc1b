"""The tune stage: search space validation, trials as Prefect task runs, resume after kill -9."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time

import optuna
import pandas as pd
import pytest
import yaml

from params import AugmentParams, CleanParams, ParamsError, SplitParams, TrainParams, TuneParams
from params.schema import load_params
from tasks.augment import build_pipelines
from tasks.clean import clean_images
from tasks.model import LITE0, preprocessing
from tasks.split import assign_splits
from tasks.train import TrainData
from tasks.tune import apply_best_params, best_record, make_storage, open_study, run_search
from tests.images import write_image_folder
from tests.project import TINY_PARAMS, env, make_project, sh

TINY_TRAIN = TrainParams(epochs=1, freeze_epochs=0, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    root = tmp_path_factory.mktemp("tune")
    write_image_folder(root / "data", per_class=8)
    records, _ = clean_images.fn(root / "data", root / "clean", CleanParams(max_side=32))
    split = assign_splits(
        pd.DataFrame([r.__dict__ for r in records]), SplitParams(train=0.6, val=0.2, test=0.2)
    )
    train_pipe, eval_pipe = build_pipelines(AugmentParams(image_size=32), *preprocessing(LITE0))
    return TrainData(split, root / "clean", train_pipe, eval_pipe, image_size=32)


def test_search_space_is_validated_against_train_params(tmp_path):
    path = tmp_path / "tune.yaml"
    cases = {
        "space: {learning_rate: {type: float, low: 0.1, high: 1}}": "not a key of train.yaml",
        "space: {lr: {type: float, low: -1, high: 1}}": "-1.0 is not a valid lr",
        "space: {device: {type: categorical, choices: [tpu]}}": "'tpu' is not a valid device",
        "space: {lr: {type: uniform, low: 0.1, high: 1}}": "does not match any of the expected",
        "space: {lr: {type: float, low: 0.1, high: 0.01}}": "must not exceed high",
        "space: {epochs: {type: int, low: 1, high: 3}}": "set by the tune stage",
    }
    for text, reason in cases.items():
        path.write_text(text + "\n")
        with pytest.raises(ParamsError) as err:
            load_params(TuneParams, path)
        assert reason in str(err.value) and str(path) in str(err.value), text


def test_parallel_trials_run_and_a_rerun_continues_the_same_study(data, tmp_path, prefect_server):
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "label_smoothing": {"type": "categorical", "choices": [0.0, 0.1]},
    }
    tune = TuneParams(n_trials=3, n_jobs=2, epochs=1, space=space)
    seen = []
    study = run_search(tune, TINY_TRAIN, data, tmp_path, on_trial=lambda r, n: seen.append(r))
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len([t for t in finished if t.state != optuna.trial.TrialState.FAIL]) == 3
    assert {r["number"] for r in seen} <= {t.number for t in study.trials}
    assert len({t.params["lr"] for t in study.trials}) == len(study.trials)  # not one point
    first_numbers = {t.number: t.params for t in study.trials}

    more = run_search(tune.model_copy(update={"n_trials": 4}), TINY_TRAIN, data, tmp_path)
    assert more.study_name == study.study_name
    assert {t.number: t.params for t in more.trials if t.number in first_numbers} == first_numbers
    assert len(more.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) >= 3

    record = best_record(more, tune)
    assert set(record["params"]) == {"lr", "label_smoothing"}
    best_yaml = tmp_path / "best.yaml"
    best_yaml.write_text(yaml.safe_dump(record))
    applied = apply_best_params(best_yaml, TINY_TRAIN)
    assert applied.lr == record["params"]["lr"]
    assert applied.label_smoothing == record["params"]["label_smoothing"]


def test_process_pool_trials(data, tmp_path, prefect_server):
    tune = TuneParams(n_trials=2, n_jobs=2, parallel="process", epochs=1)
    study = run_search(tune, TINY_TRAIN, data, tmp_path)
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2


def _states(db) -> list[tuple[int, str]]:
    try:
        with sqlite3.connect(db) as con:
            return con.execute("SELECT number, state FROM trials ORDER BY number").fetchall()
    except sqlite3.OperationalError:  # Optuna has not created its tables yet
        return []


def _beating(db) -> set[int]:
    """Numbers of RUNNING trials that have sent a heartbeat (only those can go stale)."""
    try:
        with sqlite3.connect(db) as con:
            rows = con.execute(
                "SELECT t.number FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id"
                " WHERE t.state = 'RUNNING'"
            ).fetchall()
    except sqlite3.OperationalError:
        return set()
    return {n for (n,) in rows}


def test_a_search_killed_with_sigkill_resumes(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=10)
    params = {**TINY_PARAMS, "tune": {"n_trials": 0}}
    project = make_project(tmp_path / "project", params)
    sh("visiontune", "collect", "folder", str(source), cwd=project)
    sh("visiontune", "run", cwd=project)  # upstream stages, tune skipped

    tune_yaml = project / "params" / "tune.yaml"
    tune = yaml.safe_load(tune_yaml.read_text())
    tune |= {"n_trials": 4, "epochs": 2, "heartbeat_interval": 1, "grace_period": 3}
    tune_yaml.write_text(yaml.safe_dump(tune))
    db = project / "artifacts" / "tune" / "study" / "study.db"

    proc = subprocess.Popen(
        ["visiontune", "stage", "tune"],
        cwd=project,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            states = _states(db) if db.is_file() else []
            if any(s == "COMPLETE" for _, s in states) and _beating(db):
                break
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.2)
        else:
            raise AssertionError("no trial completed within 300 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = _states(db)
    done_before = {n for n, s in killed if s in ("COMPLETE", "PRUNED")}
    running = {n for n, s in killed if s == "RUNNING"}
    assert done_before and running

    time.sleep(3)  # let the killed trial's heartbeat go stale
    sh("visiontune", "stage", "tune", cwd=project)
    after = dict(_states(db))
    assert all(after[n] in ("COMPLETE", "PRUNED") for n in done_before)  # kept
    assert all(after[n] == "FAIL" for n in running)  # failed, not left RUNNING
    assert sum(s in ("COMPLETE", "PRUNED") for s in after.values()) == 4  # budget met
    best = yaml.safe_load((project / "artifacts" / "tune" / "best_params.yaml").read_text())
    assert best["source"] == "optuna"
    study = open_study(
        TuneParams(**tune),
        make_storage(TuneParams(**tune), project / "artifacts" / "tune"),
        best["study"],
    )
    assert study.best_trial.number == best["best_trial"]
