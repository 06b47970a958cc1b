"""Multi-label: is the default recipe worth it, and do the per-label thresholds help?

    python -m benchmarks.recipe_multilabel [--dataset NAME ...] [--seeds N] [--epochs N]

On each multi-label dataset of the suite (benchmarks/recipe_data.py MULTILABEL_DATASETS:
real images tagged with several labels, installed offline) and each seed, the images are
cleaned and split by iterative stratification as the pipeline does, then two recipes
train for the same epochs at the same image size (benchmarks/recipe.py's):

- default: params/train.yaml and params/augment.yaml as shipped, their `multi_label:`
  blocks applied (BCE on multi-hot targets, the prior bias, EMA, flip only; val mAP picks
  the kept epoch, a threshold per label chosen on val);
- plain: a plain BCE fine-tune of the same model: every layer from the first step, AdamW
  1e-3, constant LR, flip-only augmentation, no label smoothing, thresholds at 0.5.

Goals (mean over seeds): the default's test macro mAP ≥ plain + 3 points, and the default's
micro-F1 with its tuned thresholds ≥ its micro-F1 at 0.5. The time per training epoch is
compared with single-label training on the same images (each image's most frequent label
as its class), same recipe, same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.recipe import IMAGE_SIZE, Prepared, recipes, shipped, spread  # noqa: E402
from benchmarks.recipe_data import MULTILABEL_DATASETS, dataset  # noqa: E402
from benchmarks.report import Result, at_least, result  # noqa: E402
from flows.project.environment import QUIET_OFFLINE  # noqa: E402
from params import AugmentParams, TrainParams  # noqa: E402

EPOCHS = 5
SEEDS = 2
RECIPES = ("default", "plain")


def prepare(name: str, work: Path) -> Prepared:
    """The dataset's tags.csv written into a data/ folder as `collect manifest` writes it
    (data/_images, sources.csv, task.json; without the DVC versioning), then cleaned."""
    from tasks.clean import build_manifest, clean_dataset
    from tasks.collect import update_records, write_items, write_task
    from tasks.sources import MULTI_LABEL, manifest_items

    data = work / name / "data"
    items, refused = manifest_items(dataset(name) / "tags.csv")
    assert not refused, refused[:3]
    update_records(data, write_items(items, data).records)
    write_task(data, MULTI_LABEL, allow_empty=False)
    clean = shipped("clean")
    manifest = build_manifest(clean_dataset(data, work / name / "clean", clean).records, data)
    return Prepared(name, manifest, work / name / "clean", clean)


def single_label(prepared: Prepared) -> Prepared:
    """The same images with one class each: their most frequent label."""
    from tasks import multilabel

    manifest = prepared.manifest.copy()  # type: ignore[attr-defined]
    sets = [multilabel.split_set(s) for s in manifest["labels"]]
    counts: dict[str, int] = {}
    for labels in sets:
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
    manifest["label"] = [max(labels, key=lambda x: (counts[x], x)) for labels in sets]
    manifest = manifest.drop(columns=["labels", "original_labels"], errors="ignore")
    return Prepared(prepared.name, manifest, prepared.clean_dir, prepared.clean)


def scores(model_pt: Path, data) -> dict[str, float]:
    """Test mAP, micro-F1 at the model's thresholds and at 0.5."""
    from tasks import multilabel
    from tasks.inference import predict_probs

    probs, targets, meta = predict_probs(model_pt, data.part("test"), data.clean_dir)
    labels = list(meta["classes"])
    tuned, _ = multilabel.multilabel_metrics(probs, targets, meta["thresholds"], labels)
    half, _ = multilabel.multilabel_metrics(probs, targets, [0.5] * len(labels), labels)
    return {"map": tuned["map_macro"], "f1_tuned": tuned["f1_micro"], "f1_half": half["f1_micro"]}


def trained(params: TrainParams, data) -> tuple[dict[str, float], float]:
    """Train (the best epoch kept, as the train stage does): its scores and s per epoch."""
    from tasks.inference import MODEL
    from tasks.train import fit

    with tempfile.TemporaryDirectory() as tmp:
        result_ = fit(params, data, out_dir=Path(tmp), show_progress=False)
        per_epoch = statistics.fmean(m.seconds for m in result_.history)
        if data.task.kind == "single_label":
            return {}, per_epoch
        return scores(Path(tmp) / MODEL, data), per_epoch


def measure(datasets=None, seeds: int = SEEDS, epochs: int = EPOCHS) -> list[Result]:
    import os

    for key, value in QUIET_OFFLINE.items():
        os.environ.setdefault(key, value)
    datasets = datasets or list(MULTILABEL_DATASETS)
    augment: AugmentParams = shipped("augment").model_copy(update={"image_size": IMAGE_SIZE})
    flip_only = augment.model_copy(
        update={
            "preset": "custom",
            "custom": [{"HorizontalFlip": {"p": 0.5}}],
            "scale_min": 1.0,
            "multi_label": {},
        }
    )
    rows: list[Result] = []
    lines = [
        "| dataset | images / labels | default mAP | plain BCE mAP | default − plain "
        "| micro-F1 tuned | micro-F1 at 0.5 | s/epoch multi vs single |",
        "|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="vt-recipe-ml-") as work:
        for name in datasets:
            prepared = prepare(name, Path(work))
            manifest = prepared.manifest
            n_labels = len({x for s in manifest["labels"] for x in s.split()})  # type: ignore[index]
            got: dict[str, list[dict[str, float]]] = {r: [] for r in RECIPES}
            seconds: dict[str, list[float]] = {"multi": [], "single": []}
            for seed in range(seeds):
                default = shipped("train").model_copy(update={"seed": seed, "device": "cpu"})
                chosen = recipes(default, epochs)
                for recipe in RECIPES:
                    started = time.perf_counter()
                    data = prepared.data(
                        seed, flip_only if recipe == "plain" else augment, default.model
                    )
                    measured, per_epoch = trained(chosen[recipe], data)
                    got[recipe].append(measured)
                    if recipe == "default":
                        seconds["multi"].append(per_epoch)
                    print(
                        f"  {name} seed {seed} {recipe:8s} "
                        + " ".join(f"{k}={v:.3f}" for k, v in measured.items())
                        + f"  {time.perf_counter() - started:.0f}s",
                        flush=True,
                    )
            single = single_label(prepared)
            data = single.data(0, augment, default.model)
            seconds["single"].append(trained(recipes(default, epochs)["default"], data)[1])
            mean = {r: statistics.fmean(m["map"] for m in got[r]) for r in RECIPES}
            tuned = [m["f1_tuned"] for m in got["default"]]
            half = [m["f1_half"] for m in got["default"]]
            ratio = statistics.fmean(seconds["multi"]) / statistics.fmean(seconds["single"])
            detail = (
                f"default mAP {spread([m['map'] for m in got['default']])}, plain "
                f"{spread([m['map'] for m in got['plain']])}; {seeds} seed(s), {epochs} "
                f"epochs, {IMAGE_SIZE}px"
            )
            margin = 100 * (mean["default"] - mean["plain"])
            rows.append(
                result(
                    "recipe_multilabel",
                    f"{name}: default − plain BCE (test mAP)",
                    margin,
                    " pts",
                    (at_least, 3.0),
                    detail,
                )
            )
            gain = 100 * (statistics.fmean(tuned) - statistics.fmean(half))
            rows.append(
                result(
                    "recipe_multilabel",
                    f"{name}: micro-F1 tuned thresholds − at 0.5",
                    gain,
                    " pts",
                    (at_least, 0.0),
                    f"tuned {spread(tuned)}, at 0.5 {spread(half)}",
                )
            )
            rows.append(
                result(
                    "recipe_multilabel",
                    f"{name}: time per epoch, multi- / single-label",
                    ratio,
                    "×",
                    None,
                    f"{statistics.fmean(seconds['multi']):.1f} s vs "
                    f"{statistics.fmean(seconds['single']):.1f} s per epoch",
                )
            )
            maps = {r: spread([m["map"] for m in got[r]]) for r in RECIPES}
            lines.append(
                f"| {name} | {len(manifest)} / {n_labels} | {maps['default']} "  # type: ignore[arg-type]
                f"| {maps['plain']} | {margin:+.1f} pts "
                f"| {spread(tuned)} | {spread(half)} | {ratio:.2f}× |"
            )
    print("\n".join(lines), flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", choices=list(MULTILABEL_DATASETS))
    parser.add_argument("--seeds", type=int, default=SEEDS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args()
    rows = measure(args.dataset, args.seeds, args.epochs)
    return 0 if all(row.met is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
