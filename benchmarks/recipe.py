"""Is the default recipe worth its tricks? Test accuracy at equal epochs and image size.

    python -m benchmarks.recipe [--full] [--dataset NAME ...] [--seeds N] [--epochs N]

On each dataset of the suite (benchmarks/recipe_data.py: real images that
install offline, of different kinds) and each seed, the images are cleaned and
split as the pipeline does (params/clean.yaml, params/split.yaml with the seed),
then four recipes train for the same epochs at the same image size:

- default: params/train.yaml and params/augment.yaml as shipped, `n_trials: 0`;
- plain: a plain PyTorch fine-tune of the same model: every layer from the first
  step, AdamW lr 1e-3, constant LR, BatchNorm in train mode, flip-only augmentation,
  no warmup, label smoothing, MixUp/CutMix or EMA;
- linear_probe: the backbone frozen (BatchNorm statistics included) for every
  epoch; only the new head trains, with the default's optimizer and schedule;
- search: the default pipeline with params/tune.yaml's search (`n_trials` trials of
  `epochs` each on the same study code as the tune stage), then the train stage's
  training with its best values (refit on train + val, as `refit: auto` does).

The epoch with the best validation score (after a refit: training score) is evaluated
on the test split. The
goals: default beats max(plain, linear_probe) by ≥ 3 points, and the search adds
≥ 2 more and never ends below the default, on every dataset (mean over seeds).
Without --full a reduced suite runs (two datasets, one seed) for `make bench`; --full
runs every dataset with FULL_SEEDS seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.recipe_data import DATASETS, dataset  # noqa: E402
from benchmarks.report import Result, at_least, result  # noqa: E402
from flows.project import Project  # noqa: E402
from flows.project.environment import QUIET_OFFLINE  # noqa: E402
from params import AugmentParams, CleanParams, TrainParams, TuneParams  # noqa: E402

EPOCHS = 5
IMAGE_SIZE = 64
REDUCED = ("demo", "digits")
# seeds of the full suite: with 75-180 test images a seed moves a recipe by up to ±5 points,
# and 2 seeds put the Apple emoji probe 1.6 points ahead where 6 put it 1.1 behind
FULL_SEEDS = 4
RECIPES = ("default", "plain", "linear_probe", "search")


def shipped(name: str):
    """A params file of this repository, validated as every stage reads it."""
    return Project(ROOT).params(name)


def recipes(default: TrainParams, epochs: int) -> dict[str, TrainParams]:
    base = default.model_copy(update={"epochs": epochs, "patience": epochs})
    plain = base.model_copy(
        update={
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 1e-2,  # AdamW's own default
            "backbone_lr_mult": 1.0,
            "layer_lr_decay": 1.0,
            "freeze_epochs": 0,
            "unfreeze_stages": 0,
            "batchnorm": "adapt",  # plain model.train(): BatchNorm follows the batches
            "schedule": "constant",
            "warmup_epochs": 0.0,
            "label_smoothing": 0.0,
            "mixup_alpha": 0.0,
            "cutmix_alpha": 0.0,
            "ema_decay": 0.0,
            "grad_clip": 0.0,
            "prior_bias": False,
            "multi_label": {},  # the same plain fine-tune on multi-label data
        }
    )
    probe = base.model_copy(
        update={"freeze_epochs": epochs, "unfreeze_stages": 0, "batchnorm": "frozen"}
    )
    return {"default": base, "plain": plain, "linear_probe": probe}


@dataclass
class Prepared:
    """One dataset cleaned once; split (and so TrainData) per seed."""

    name: str
    manifest: object  # pd.DataFrame
    clean_dir: Path
    clean: CleanParams

    def data(self, seed: int, augment: AugmentParams, model: str):
        from tasks.augment import build_pipelines
        from tasks.label_task import task_of
        from tasks.model import preprocessing
        from tasks.split import plan_splits
        from tasks.train import TrainData

        split_params = shipped("split").model_copy(update={"seed": seed, "folds": 0})
        split = plan_splits(self.manifest, split_params).frame
        augment = task_of(split).recipe(augment)  # as the augment stage applies it
        train, evaluation = build_pipelines(augment, *preprocessing(model))
        return TrainData(
            split,
            self.clean_dir,
            train,
            evaluation,
            image_size=augment.image_size,
            clean=self.clean,
        )


def prepare(name: str, work: Path) -> Prepared:
    from tasks.clean import build_manifest, clean_dataset

    clean: CleanParams = shipped("clean")
    clean_dir = work / name
    manifest = build_manifest(clean_dataset(dataset(name), clean_dir, clean).records)
    return Prepared(name, manifest, clean_dir, clean)


def test_accuracy(model_pt: Path, data) -> float:
    from tasks.inference import predict_probs

    test = data.part("test")
    probs, targets, _ = predict_probs(model_pt, test, data.clean_dir, batch_size=64)
    return float((probs.argmax(1) == targets).mean())


def trained_accuracy(params: TrainParams, data) -> float:
    """Train with `params` (the best epoch kept, as the train stage does); test accuracy."""
    from tasks.inference import MODEL
    from tasks.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        fit(params, data, out_dir=Path(tmp), show_progress=False)
        return test_accuracy(Path(tmp) / MODEL, data)


def search(tune: TuneParams, base: TrainParams, data, out_dir: Path):
    """The tune stage's search, in this process: trials one after another, then what the
    train stage fits after it (best values from best_params.yaml, the refit) and the study."""
    import yaml

    from tasks.tune import (
        best_record,
        final_training,
        make_storage,
        open_study,
        run_trial,
        study_name,
    )

    name = study_name(tune, base, data)
    for slot in range(tune.n_trials):
        run_trial(slot, tune, base, data, out_dir, name, deadline=None)
    study = open_study(tune, make_storage(tune, out_dir), name)
    best = out_dir / "best_params.yaml"  # as the tune stage writes it, and train reads it
    best.write_text(yaml.safe_dump(best_record(study, tune)))
    return final_training(best, base, data), study


def trial_scores(study, tune: TuneParams, base: TrainParams, data, known: dict[int, float]):
    """Every complete trial's test accuracy (its params trained again: training is
    deterministic), its val score and sign-test p against trial 0, to judge choice rules."""
    from optuna.trial import TrialState

    from tasks.tune import START, sign_test

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    start = next((t for t in trials if t.user_attrs.get(START)), None)
    rows = []
    for t in trials:
        if t.number not in known:
            params = TrainParams.model_validate({**base.model_dump(), **t.params})
            known[t.number] = trained_accuracy(params, data)
        p = None if start is None or t is start else sign_test(t, start)
        rows.append({"trial": t.number, "val": t.value, "test": known[t.number], "p": p})
    return rows


def run_one(
    prepared: Prepared,
    seed: int,
    epochs: int,
    names: list[str],
    trials_out: Path | None = None,
) -> dict[str, float]:

    augment: AugmentParams = shipped("augment").model_copy(update={"image_size": IMAGE_SIZE})
    default: TrainParams = shipped("train").model_copy(update={"seed": seed, "device": "cpu"})
    chosen = recipes(default, epochs)
    flip_only = augment.model_copy(
        update={"preset": "custom", "custom": [{"HorizontalFlip": {"p": 0.5}}], "scale_min": 1.0}
    )
    scores: dict[str, float] = {}
    for recipe in names:
        started = time.perf_counter()
        data = prepared.data(seed, flip_only if recipe == "plain" else augment, default.model)
        params, fit_data = chosen.get(recipe), data
        if recipe == "search":
            tune: TuneParams = shipped("tune")
            with tempfile.TemporaryDirectory() as tmp:
                final, study = search(tune, chosen["default"], data, Path(tmp))
            params, fit_data = final.params, final.data
        scores[recipe] = trained_accuracy(params, fit_data)
        print(
            f"  {prepared.name} seed {seed} {recipe:13s} test_accuracy={scores[recipe]:.3f}"
            f"  {time.perf_counter() - started:.0f}s",
            flush=True,
        )
        if recipe == "search" and trials_out is not None:
            from tasks.tune import START, chosen_trial

            picked = chosen_trial(study, tune)
            known = {} if final.refit else {picked.number: scores["search"]}
            start = [t.number for t in study.trials if t.user_attrs.get(START)]
            if "default" in scores and start:
                known.setdefault(start[0], scores["default"])
            rows = trial_scores(study, tune, chosen["default"], data, known)
            record = {"dataset": prepared.name, "seed": seed, "chosen": picked.number}
            with trials_out.open("a") as out:
                out.write(json.dumps(record | {"trials": rows}) + "\n")
    return scores


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.pstdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(scores: dict[str, dict[str, list[float]]], sizes: dict[str, str]) -> str:
    lines = [
        "| dataset | images | default | plain fine-tune | linear probe | default − best baseline "
        "| 3-trial search | search − default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, by_recipe in scores.items():
        mean = {r: statistics.fmean(v) for r, v in by_recipe.items()}
        baselines = [mean[r] for r in ("plain", "linear_probe") if r in mean]
        cells = [spread(by_recipe[r]) if r in by_recipe else "–" for r in RECIPES]
        margin = (
            f"{100 * (mean['default'] - max(baselines)):+.1f} pts"
            if "default" in mean and baselines
            else "–"
        )
        gain = (
            f"{100 * (mean['search'] - mean['default']):+.1f} pts"
            if {"search", "default"} <= set(mean)
            else "–"
        )
        lines.append(
            f"| {name} | {sizes[name]} | {cells[0]} | {cells[1]} | {cells[2]} | {margin} "
            f"| {cells[3]} | {gain} |"
        )
    return "\n".join(lines)


def measure(
    full: bool = False, datasets=None, seeds=None, epochs=EPOCHS, names=None, trials_out=None
) -> list[Result]:
    """Run the suite; rows for results.md, and the markdown table printed."""
    import os

    for key, value in QUIET_OFFLINE.items():
        os.environ.setdefault(key, value)
    datasets = datasets or (list(DATASETS) if full else list(REDUCED))
    seeds = seeds or (FULL_SEEDS if full else 1)
    names = names or list(RECIPES)
    scores: dict[str, dict[str, list[float]]] = {}
    sizes: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="vt-recipe-") as work:
        for name in datasets:
            prepared = prepare(name, Path(work))
            classes = prepared.manifest["label"].nunique()  # type: ignore[attr-defined]
            sizes[name] = f"{len(prepared.manifest)} / {classes} classes"  # type: ignore[arg-type]
            scores[name] = {}
            for seed in range(seeds):
                for recipe, value in run_one(prepared, seed, epochs, names, trials_out).items():
                    scores[name].setdefault(recipe, []).append(value)
    print(table(scores, sizes), flush=True)
    return goal_rows(scores, seeds, epochs)


def goal_rows(scores: dict[str, dict[str, list[float]]], seeds: int, epochs: int) -> list[Result]:
    """The results.md rows: each dataset's margin over the baselines and the search's gain."""
    rows = []
    for name, by_recipe in scores.items():
        mean = {r: statistics.fmean(v) for r, v in by_recipe.items()}
        if "default" not in mean:
            continue
        baselines = [mean[r] for r in ("plain", "linear_probe") if r in mean]
        detail = ", ".join(f"{r} {spread(v)}" for r, v in by_recipe.items())
        detail += f"; {seeds} seed(s), {epochs} epochs, {IMAGE_SIZE}px"
        if baselines:
            margin = 100 * (mean["default"] - max(baselines))
            rows.append(
                result(
                    "recipe",
                    f"{name}: default − best baseline",
                    margin,
                    " pts",
                    (at_least, 3.0),
                    detail,
                )
            )
        if "search" in mean:
            gain = 100 * (mean["search"] - mean["default"])
            rows.append(
                result("recipe", f"{name}: search − default", gain, " pts", (at_least, 2.0), detail)
            )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help=f"every dataset, {FULL_SEEDS} seeds")
    parser.add_argument("--dataset", action="append", choices=list(DATASETS))
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--recipe", action="append", choices=list(RECIPES))
    parser.add_argument(
        "--trials-out",
        type=Path,
        help="append each search's trials (val, test accuracy, sign-test p) here, as JSON lines",
    )
    args = parser.parse_args()
    rows = measure(args.full, args.dataset, args.seeds, args.epochs, args.recipe, args.trials_out)
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
