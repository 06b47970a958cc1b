"""Multi-label training, thresholds, evaluation, prediction and export on real emoji tagged with
their keywords (tests/multilabel_data.py): the same code paths as single-label, through the
label task the data implies."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from params import AugmentParams, EvaluateParams, SplitParams, TrainParams
from tasks import multilabel
from tasks.augment import build_pipelines
from tasks.clean import clean_dataset
from tasks.inference import MODEL, LoadedModel, predict_probs
from tasks.label_task import MULTI, SINGLE, task_named, task_of
from tasks.model import LITE0, preprocessing
from tasks.split import plan_splits
from tasks.train import TrainData, fit
from tests.multilabel_data import emoji_tags
from tests.training import CLEAN

TINY = dict(epochs=3, freeze_epochs=1, batch_size=8, patience=5, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> tuple[TrainData, Path]:
    """60 emoji with 1-3 of 6 labels: cleaned into a real cache, split 60/20/20 by labels."""
    root = tmp_path_factory.mktemp("multilabel")
    tags = pd.read_csv(emoji_tags(root / "source"), dtype=str)
    (root / "data").mkdir()
    shutil.copytree(root / "source" / "images", root / "data" / "_images")
    records = clean_dataset(root / "data", root / "clean", CLEAN).records
    manifest = pd.DataFrame([r.__dict__ for r in records])
    sets = dict(
        zip("_images/" + tags["path"].str.removeprefix("images/"), tags["labels"], strict=True)
    )
    manifest["labels"] = [multilabel.join_set(sets[p].split()) for p in manifest["path"]]
    manifest = manifest.drop(columns=["label"])
    split = plan_splits(manifest, SplitParams(train=0.6, val=0.2, test=0.2)).frame
    mean, std = preprocessing(LITE0)
    train_pipe, eval_pipe = build_pipelines(AugmentParams(image_size=32), mean, std)
    data = TrainData(split, root / "clean", train_pipe, eval_pipe, image_size=32, clean=CLEAN)
    return data, root


@pytest.fixture(scope="module")
def trained(tagged) -> tuple[TrainData, Path]:
    data, root = tagged
    out = root / "train"
    result = fit(TrainParams(**TINY), data, out_dir=out, show_progress=False)
    assert result.monitor == "val_map"  # monitor: auto on multi-label data
    assert all(m.val_map is not None for m in result.history)
    return data, out / MODEL


def test_the_data_implies_the_kind(tagged):
    data, _ = tagged
    assert task_of(data.split) is MULTI and data.task is MULTI
    assert data.classes == ["animal", "face", "female", "flag", "male", "nature"]
    targets = data.task.targets(data.part("train"), data.classes)
    assert targets.shape == (len(data.part("train")), 6) and set(np.unique(targets)) == {0, 1}
    assert task_of(data.split.rename(columns={"labels": "label"})) is SINGLE


def test_model_file_holds_the_kind_and_a_threshold_per_label(trained):
    data, model = trained
    meta = LoadedModel.load(model).meta
    assert meta["task"] == "multi_label" and task_named(meta["task"]) is MULTI
    assert meta["classes"] == data.classes
    assert len(meta["thresholds"]) == 6 and all(0 <= t <= 1 for t in meta["thresholds"])
    assert 0 <= meta["threshold_f1"] <= 1


def test_stored_thresholds_give_the_validation_f1_the_model_reports(trained):
    """The thresholds chosen on val reproduce, through the model file and its own eval
    pipeline, the validation micro-F1 recorded with them."""
    from sklearn.metrics import f1_score

    data, model = trained
    probs, targets, meta = predict_probs(model, data.part("val"), data.clean_dir)
    decided = multilabel.decide(probs, np.asarray(meta["thresholds"]))
    f1 = f1_score(targets > 0.5, decided, average="micro", zero_division=0)
    assert f1 == pytest.approx(meta["threshold_f1"], abs=1e-6)
    # the best cut of each label beats (or ties) one global 0.5
    half = f1_score(targets > 0.5, probs >= 0.5, average="micro", zero_division=0)
    assert f1 >= half - 1e-9


def test_evaluation_reports_mean_average_precision_per_label(trained):
    from sklearn.metrics import average_precision_score

    data, model = trained
    test = data.part("test")
    probs, targets, meta = predict_probs(model, test, data.clean_dir)
    ev = MULTI.evaluate(probs, targets, data.classes, list(test["path"]), EvaluateParams(), meta)
    has = targets.sum(0) > 0
    expected = average_precision_score(targets[:, has], probs[:, has], average="macro")
    assert ev.metrics["map_macro"] == pytest.approx(expected)
    assert {"f1_micro", "f1_macro", "f1_samples", "subset_accuracy", "hamming_loss"} <= set(
        ev.metrics
    )
    assert list(ev.per_class["class"]) == data.classes
    assert {"ap", "precision", "recall", "f1", "support", "threshold"} <= set(ev.per_class)
    # predictions.csv: one row per image and label, with the threshold that decided it
    assert len(ev.predictions) == 6 * len(test)
    assert set(ev.predictions["actual"]) <= {"yes", "no"}
    assert set(ev.curves["label"]) <= set(data.classes) and len(ev.curves)
    line = MULTI.headline(ev)
    assert line.startswith("test mAP") and "worst label" in line


def test_predict_gives_a_label_set_and_a_probability_per_label(trained, tagged):
    from tasks.predict import predict_images

    data, model = trained
    _, root = tagged
    paths = sorted((root / "data" / "_images").glob("*.png"))[:8]
    frame = predict_images(model, paths)
    assert list(frame.columns) == ["path", "labels", *[f"p_{c}" for c in data.classes], "error"]
    meta = LoadedModel.load(model).meta
    for row in frame.itertuples():
        probs = np.array([getattr(row, f"p_{c}") for c in data.classes])
        chosen = {
            c for c, p, t in zip(data.classes, probs, meta["thresholds"], strict=True) if p >= t
        }
        assert set(row.labels.split()) == chosen
    everything = predict_images(model, paths, threshold=0.0)
    assert all(set(s.split()) == set(data.classes) for s in everything["labels"])
    nothing = predict_images(model, paths, threshold=1.0)
    assert (nothing["labels"] == "").all()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exports_carry_sigmoid_probabilities_and_thresholds(trained, tmp_path, fmt):
    from tasks.export import export_model
    from tasks.runtime import open_model
    from tests.training import split_pixels_of

    data, model = trained
    loaded = LoadedModel.load(model)
    pixels = split_pixels_of(data, data.classes)
    suffix = ".onnx" if fmt == "onnx" else ".ts"
    parity = export_model(loaded.net, loaded.meta, fmt, tmp_path / f"m{suffix}", pixels)
    assert parity.same_argmax and parity.max_abs_diff <= 1e-4
    exported = open_model(tmp_path / f"m{suffix}")
    assert exported.meta["task"] == "multi_label"
    assert exported.meta["thresholds"] == pytest.approx(loaded.meta["thresholds"])
    logits, probs = exported.run(np.ascontiguousarray(pixels))
    assert np.allclose(probs, torch.sigmoid(torch.from_numpy(logits)).numpy(), atol=1e-6)
    assert not np.allclose(probs.sum(1), 1)  # not a softmax


def test_the_search_ranks_trials_by_val_map_and_compares_them_per_image(tagged, tmp_path):
    from params import TuneParams
    from tasks.tune import (
        HITS,
        best_record,
        for_data,
        make_storage,
        open_study,
        run_trial,
        study_name,
        unpack_hits,
    )

    data, _ = tagged
    space = {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    tune, base = for_data(TuneParams(n_trials=2, epochs=1, space=space), TrainParams(**TINY), data)
    assert (tune.metric, base.monitor) == ("val_map", "val_map")
    name = study_name(tune, base, data)
    for slot in range(2):
        run_trial(slot, tune, base, data, tmp_path, name, deadline=None)
    study = open_study(tune, make_storage(tune, tmp_path), name)
    assert study.direction.name == "MAXIMIZE"
    for trial in study.trials:  # each trial keeps its best epoch's ranking precision per image
        scores = unpack_hits(trial.user_attrs[HITS])
        assert scores.dtype == float and scores.size == len(data.part("val"))
        assert ((scores >= 0) & (scores <= 1)).all()
    assert "best_val_map" in best_record(study, tune)


def test_a_trial_replaces_the_start_only_if_its_per_image_gain_is_not_noise():
    import optuna
    from optuna.distributions import FloatDistribution

    from params import TuneParams
    from tasks.tune import HITS, START, chosen_trial, pack_hits

    study = optuna.create_study(direction="maximize")
    lr = {"lr": FloatDistribution(1e-3, 1e-2, log=True)}
    rng = np.random.default_rng(0)
    start = rng.uniform(0.3, 0.95, 200)

    def add(scores: np.ndarray, first: bool = False) -> None:
        attrs = {HITS: pack_hits(scores)} | ({START: True} if first else {})
        study.add_trial(
            optuna.trial.create_trial(
                params={"lr": 0.001 + len(study.trials) / 1000},
                distributions=lr,
                value=float(scores.mean()),
                user_attrs=attrs,
            )
        )

    add(start, first=True)
    add(np.clip(start + rng.normal(0.008, 0.05, 200), 0, 1))  # a hair better on average: noise
    tune = TuneParams(n_trials=3, metric="val_map", confidence=0.9)
    assert study.best_trial.number == 1  # the best by value, but its gain is a Wilcoxon p ≈ 0.25
    assert chosen_trial(study, tune).number == 0
    add(np.clip(start + 0.05, 0, 1))  # better on nearly every image
    assert chosen_trial(study, tune).number == 2


def test_int8_export_is_gated_on_every_label_decision(trained, tmp_path):
    from tasks.export import export_model, metadata
    from tasks.quantize import gate, quantize_int8, quantized_path
    from tasks.runtime import open_model
    from tests.training import split_pixels_of

    data, model = trained
    loaded = LoadedModel.load(model)
    net, meta = loaded.net, loaded.meta
    fp32 = tmp_path / "model.onnx"
    export_model(net, meta, "onnx", fp32, split_pixels_of(data, data.classes))
    int8 = quantized_path(fp32, "int8")
    calibration = split_pixels_of(data, data.classes, "train")
    quantize_int8(fp32, int8, calibration, metadata(meta, True, "int8"))
    pixels = split_pixels_of(data, data.classes)
    targets = data.task.targets(data.part("test"), data.classes)
    checked = gate(net, open_model(int8), [(pixels, targets)], meta, "int8")
    assert checked.n_images == len(pixels)  # images; agreement is over image × label decisions
    cells = len(pixels) * len(data.classes)
    assert checked.agreement * cells == pytest.approx(round(checked.agreement * cells))
    assert 0.9 <= checked.agreement <= 1 and 0 <= checked.accuracy <= 1
    # the reference accuracy is the model's own label accuracy at its thresholds
    probs, truth, _ = predict_probs(model, data.part("test"), data.clean_dir)
    own = (multilabel.decide(probs, np.asarray(meta["thresholds"])) == (truth > 0.5)).mean()
    assert checked.reference_accuracy == pytest.approx(own, abs=1.5 / cells)  # ≤ 1 float tie


def test_mixing_smoothing_ema_and_both_balance_plans_train_on_label_sets(tagged):
    """MixUp + CutMix on multi-hot targets, label smoothing, EMA and bf16 autocast with
    pos_weight, then a rarest-label sampler: finite losses, and the sampler favours the
    images of the rarest label."""
    from tasks.balance import BalancePlan, balance_plan

    data, _ = tagged
    params = TrainParams(
        **{
            **TINY,
            "epochs": 2,
            "mixup_alpha": 0.2,
            "cutmix_alpha": 1.0,
            "label_smoothing": 0.1,
            "ema_decay": 0.9,
            "amp": "bf16",
            "channels_last": "on",
        }
    )
    raw = balance_plan(data.split, "class_weights")
    assert set(raw["pos_weights"]) == set(data.classes)
    weighted = TrainData(**{**data.__dict__, "balance": BalancePlan(**raw)})
    history = fit(params, weighted, show_progress=False).history
    assert all(np.isfinite(m.train_loss) and m.val_map is not None for m in history)
    sampled = BalancePlan(**{**raw, "strategy": "weighted_sampler"})
    targets = data.task.targets(data.part("train"), data.classes)
    generator = torch.Generator().manual_seed(0)
    sampler = sampled.sampler(targets, data.classes, generator, task=data.task)
    drawn = targets[list(sampler)]
    rarest = int(np.argmin(targets.sum(0)))
    assert drawn[:, rarest].mean() > targets[:, rarest].mean()


def test_crossval_scores_folds_on_map_and_finds_label_set_issues(tagged, tmp_path):
    from params import CrossvalParams
    from tasks.crossval import describe, run_crossval

    data, _ = tagged
    folded = plan_splits(
        data.split.drop(columns=["split"]), SplitParams(train=0.6, val=0.2, test=0.2, folds=2)
    ).frame
    cv_data = TrainData(**{**data.__dict__, "split": folded})
    cv = run_crossval(
        TrainParams(**{**TINY, "epochs": 1}),
        CrossvalParams(epochs=1, label_issues=5),
        cv_data,
        tmp_path,
        show_progress=False,
    )
    assert all({"f1_micro", "map_macro"} <= set(f.metrics) for f in cv.folds)
    assert "map_macro_mean" in cv.summary and cv.ensemble["metric"] == "map_macro"
    assert any(
        line.startswith("ensemble of") and "map_macro" in line
        for line in describe(cv.summary, cv.ensemble)
    )
    issues = cv.label_issues
    assert list(issues.columns) == [
        "path",
        "sha256",
        "labels",
        "suggested_add",
        "suggested_remove",
        "quality",
        "fold",
    ]
    assert len(issues) <= 5 and set(issues["path"]) <= set(folded["path"])
    assert {"path", "labels", "fold", "predicted"} <= set(cv.oof.columns)


def test_multi_label_data_trains_with_the_multi_label_block_and_a_searched_value_wins(tagged):
    """train.yaml's `multi_label:` values replace its own on label sets only; a value the
    search chose (best_params.yaml) is not overwritten by the block."""
    from tasks.train import resolved
    from tasks.tune import overlaid

    data, _ = tagged
    block = {"freeze_epochs": 0, "batchnorm": "adapt", "lr": 1e-3, "schedule": "constant"}
    params = TrainParams(**{**TINY, "multi_label": block})
    mine = resolved(params, data)
    assert (mine.lr, mine.head_epochs, mine.batchnorm, mine.schedule) == (
        1e-3, 0, "adapt", "constant"
    )  # fmt: skip
    assert mine.multi_label == {} and resolved(mine, data) == mine  # applied once
    single = TrainData(**{**data.__dict__, "split": _single_label(data.split)})
    assert resolved(params, single).lr == 3e-3 and resolved(params, single).head_epochs == 1
    searched = resolved(overlaid({"params": {"lr": 5e-3}}, params), data)
    assert searched.lr == 5e-3 and searched.batchnorm == "adapt"
    history = fit(params.model_copy(update={"epochs": 1}), data, show_progress=False).history
    assert not history[0].frozen and history[0].lr == pytest.approx(1e-3)  # no head-only epoch


def _single_label(split: pd.DataFrame) -> pd.DataFrame:
    first = [s.split()[0] for s in split["labels"]]
    return split.drop(columns=["labels"]).assign(label=first)


@pytest.mark.parametrize("kind", ["multi_label", "single_label"])
def test_prior_bias_starts_the_head_at_the_train_shares(tagged, kind):
    """The head's bias gives each label its train share (sigmoid; for single-label the
    softmax gives each class its share), so on label sets the first loss is lower than
    from the library's initialisation: the steps go to features, not base rates."""
    from tasks.train import build_run

    data, _ = tagged
    if kind == "single_label":
        data = TrainData(**{**data.__dict__, "split": _single_label(data.split)})
    params = TrainParams(**{**TINY, "prior_bias": True})
    train = data.task.targets(data.part("train"), data.classes)
    run = build_run(params, data)
    head = run.clf.head if isinstance(run.clf.head, torch.nn.Linear) else run.clf.head[-1]
    if kind == "multi_label":
        shares = torch.tensor(np.asarray(train).mean(0), dtype=torch.float32)
        assert torch.allclose(head.bias.sigmoid(), shares, atol=0.02)
    else:
        shares = torch.bincount(torch.tensor(train), minlength=len(data.classes)).float()
        assert torch.allclose(head.bias.softmax(0), shares / shares.sum(), atol=0.02)

        return  # near-even classes here: the prior is close to the library's start

    def first_loss(run) -> float:
        images, targets = next(iter(run.train_loader))
        run.clf.net.eval()
        with torch.no_grad():
            return float(run.steps.criterion(run.clf.net(images), targets))

    assert first_loss(run) < first_loss(
        build_run(params.model_copy(update={"prior_bias": False}), data)
    )
