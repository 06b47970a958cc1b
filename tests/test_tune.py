"""The tune stage: search space validation, trials as Prefect task runs, resume after kill -9."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import optuna
import pytest
import yaml

from flows.tune import run_search
from params import ParamsError, TrainParams, TuneParams
from params.schema import load_params
from tasks.train import TrainData, fit
from tasks.tune import (
    HITS,
    SEARCHED,
    apply_best_params,
    best_record,
    chosen_trial,
    make_storage,
    open_study,
    run_trial,
    study_name,
    unpack_hits,
)
from tests.images import write_image_folder
from tests.processes import kill_when, start
from tests.project import TINY_PARAMS, make_project
from tests.training import tiny_train_data

TINY_TRAIN = TrainParams(epochs=1, freeze_epochs=0, batch_size=8, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    return tiny_train_data(tmp_path_factory.mktemp("tune"), per_class=8)


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
    assert len(seen) >= 3  # every finished trial was reported
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


def test_the_first_trial_is_train_yaml_and_other_data_draws_other_trials(data, tmp_path):
    space = {
        "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "batchnorm": {"type": "categorical", "choices": ["frozen", "adapt"]},
        "dropout": {"type": "float", "low": 0.3, "high": 0.5},  # 0.2 lies outside: searched
    }
    tune = TuneParams(n_trials=3, epochs=1, space=space)
    base = TINY_TRAIN.model_copy(update={"lr": 0.004, "weight_decay": 1e-4})
    other = TrainData(
        data.split.iloc[1:], data.clean_dir, data.train_pipeline, data.eval_pipeline, 32
    )
    trials = {}
    for name, rows in {"data": data, "other": other}.items():
        folder = tmp_path / name
        study_id = study_name(tune, base, rows)
        for slot in range(tune.n_trials):
            run_trial(slot, tune, base, rows, folder, study_id, deadline=None)
        study = open_study(tune, make_storage(tune, folder), study_id)
        assert isinstance(study.sampler, optuna.samplers.QMCSampler)  # auto, 3 trials
        trials[name] = sorted(study.trials, key=lambda t: t.number)
        assert len(trials[name]) == 3
        first = trials[name][0].params
        fixed = {"lr": 0.004, "weight_decay": 1e-4, "batchnorm": "frozen"}
        assert {key: first[key] for key in fixed} == fixed
        assert 0.3 <= first["dropout"] <= 0.5  # outside the space: sampled, not forced
        assert len({t.params["lr"] for t in trials[name]}) == 3
        val = len(rows.part("val"))
        for t in trials[name]:  # each trial keeps which val images its best epoch got right
            hits = unpack_hits(t.user_attrs[HITS])
            assert hits.size == val and hits.mean() == pytest.approx(t.value)
    assert trials["data"][1].params["lr"] != trials["other"][1].params["lr"]


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
    from flows.collect import run_collect
    from flows.pipeline import pipeline_flow, run_stage
    from flows.project import Project

    source = tmp_path / "source"
    write_image_folder(source, per_class=10)
    tune = {
        **TINY_PARAMS["tune"],
        "n_trials": 3,
        "epochs": 2,
        "heartbeat_interval": 1,
        "grace_period": 3,
    }
    project = make_project(tmp_path / "project", {**TINY_PARAMS, "tune": tune})
    run_collect("folder", str(source), str(project))
    pipeline_flow(str(project), until="augment")  # the stages upstream of tune, in-process
    db = project / "artifacts" / "tune" / "study" / "study.db"

    # the search runs in a real process (the console script dvc.yaml calls), killed with -9
    # once a trial has finished and the next one is running with a heartbeat
    proc = start("visiontune", "stage", "tune", cwd=project)
    kill_when(
        proc,
        lambda: db.is_file() and any(s == "COMPLETE" for _, s in _states(db)) and _beating(db),
        "a trial completed and the next one was beating",
    )
    killed = _states(db)
    done_before = {n for n, s in killed if s in ("COMPLETE", "PRUNED")}
    running = {n for n, s in killed if s == "RUNNING"}
    assert done_before and running

    time.sleep(3)  # let the killed trial's heartbeat go stale
    run_stage(Project(project), "tune")  # the rerun: what `visiontune stage tune` runs
    after = dict(_states(db))
    assert all(after[n] in ("COMPLETE", "PRUNED") for n in done_before)  # kept
    assert all(after[n] == "FAIL" for n in running)  # failed, not left RUNNING
    assert sum(s in ("COMPLETE", "PRUNED") for s in after.values()) == 3  # budget met
    best = yaml.safe_load((project / "artifacts" / "tune" / "best_params.yaml").read_text())
    assert best["source"] == SEARCHED
    study = open_study(
        TuneParams(**tune),
        make_storage(TuneParams(**tune), project / "artifacts" / "tune"),
        best["study"],
    )
    assert chosen_trial(study, TuneParams(**tune)).number == best["best_trial"]


def test_the_best_trial_replaces_train_yaml_only_by_more_than_min_gain():
    from optuna.distributions import FloatDistribution

    from tasks.tune import START

    study = optuna.create_study(direction="maximize")
    lr = {"lr": FloatDistribution(1e-3, 1e-2, log=True)}

    def add(value: float, start: bool = False) -> None:
        attrs = {START: True} if start else {}
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.001 + value / 1000}, distributions=lr, value=value, user_attrs=attrs
            )
        )

    add(0.80, start=True)
    add(0.81)  # one val image better: noise
    tune = TuneParams(n_trials=3, min_gain=0.02)
    assert chosen_trial(study, tune).number == 0
    record = best_record(study, tune)
    assert record["best_trial"] == 0 and record["params"] == study.trials[0].params
    assert "kept_start_point" in record and "trial 1" in record["kept_start_point"]
    add(0.83)
    assert chosen_trial(study, tune).number == 2
    assert "kept_start_point" not in best_record(study, tune)
    assert chosen_trial(study, tune.model_copy(update={"min_gain": 0.0})).number == 2


def test_the_best_trial_must_also_win_a_paired_sign_test_on_the_val_images():
    from optuna.distributions import FloatDistribution

    from tasks.tune import START, pack_hits

    study = optuna.create_study(direction="maximize")
    lr = {"lr": FloatDistribution(1e-3, 1e-2, log=True)}
    start = np.zeros(100, dtype=bool)
    start[:80] = True  # 0.80

    def add(hits: np.ndarray, first: bool = False) -> None:
        attrs = {HITS: pack_hits(hits)} | ({START: True} if first else {})
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.001 + len(study.trials) / 1000},
                distributions=lr,
                value=float(hits.mean()),
                user_attrs=attrs,
            )
        )

    add(start, first=True)
    swapped = start.copy()
    swapped[70:80] = False  # 10 images lost…
    swapped[80:95] = True  # …15 won: 0.85, but 15 of 25 disagreements is a coin's luck
    add(swapped)
    tune = TuneParams(n_trials=3, min_gain=0.0, confidence=0.9)
    record = best_record(study, tune)
    assert record["best_trial"] == 0 and record["sign_test_p"] == pytest.approx(0.212, abs=1e-3)
    assert "sign test p = 0.212" in record["kept_start_point"]
    better = start.copy()
    better[80:86] = True  # 6 won, none lost: 0.86, p = 1/64
    add(better)
    assert chosen_trial(study, tune).number == 2
    assert best_record(study, tune)["sign_test_p"] == pytest.approx(1 / 64, abs=1e-4)
    assert chosen_trial(study, tune.model_copy(update={"confidence": 0.99})).number == 0
    assert chosen_trial(study, tune.model_copy(update={"min_gain": 0.1})).number == 0


def test_after_a_search_the_final_training_learns_from_the_val_images_too(data, tmp_path):
    from tasks.tune import final_training

    n_train, n_val = len(data.part("train")), len(data.part("val"))
    assert n_val > 0
    searched = tmp_path / "searched.yaml"
    searched.write_text(yaml.safe_dump({"source": SEARCHED, "params": {"lr": 0.002}}))
    passthrough = tmp_path / "passthrough.yaml"
    passthrough.write_text(yaml.safe_dump({"source": "params/train.yaml (n_trials: 0)"}))
    mine = TINY_TRAIN.model_copy(update={"epochs": 2, "patience": 1})

    final = final_training(searched, mine, data)
    assert final.refit and final.params.lr == 0.002
    assert final.params.patience == 2  # no early stopping on the training metric
    assert len(final.data.part("train")) == n_train + n_val and final.data.part("val").empty
    assert final.data.fingerprint() != data.fingerprint()  # never resumes the other run
    assert final.overridden and "lr 0.003 → 0.002" in final.overridden
    result = fit(final.params, final.data, show_progress=False)
    assert len(result.history) == 2 and all(m.val_accuracy is None for m in result.history)

    kept = final_training(passthrough, mine, data)
    assert not kept.refit and kept.data is data and kept.params.patience == 1
    off = final_training(searched, mine.model_copy(update={"refit": "off"}), data)
    assert not off.refit and len(off.data.part("val")) == n_val
    on = final_training(passthrough, mine.model_copy(update={"refit": "on"}), data)
    assert on.refit and on.data.part("val").empty
    # trials never refit, so the setting does not start another study
    tune = TuneParams(n_trials=1)
    assert study_name(tune, mine, data) == study_name(
        tune, mine.model_copy(update={"refit": "off"}), data
    )
