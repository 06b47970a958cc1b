"""The model registry: versions, the champion, and every promotion decision.

Layout under models/: versions/v<N>/{model.pt,metrics.json} and registry.json.
A promotion copies the challenger into a new version folder first and only
then replaces registry.json atomically (temp file + rename): the rename is the
commit point, so a crash at any moment leaves either the old champion or the
new one in place, never a half-promoted state.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from params import RetrainParams
from tasks.files import write_json
from tasks.label_task import SingleLabel, task_named

REGISTRY = "registry.json"


@dataclass
class ModelVersion:
    version: int
    path: str  # relative to models/
    metrics: dict[str, float]
    data_version: str | None
    git_commit: str | None
    created: str


@dataclass
class Decision:
    promoted: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None
    champion_version: int | None
    new_version: int | None
    data_version: str | None
    compared: int | None = None  # test images both models were scored on
    new_classes: list[str] = field(default_factory=list)  # test classes the champion lacked
    removed_classes: list[str] = field(default_factory=list)  # champion classes now gone
    decided: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


@dataclass
class Registry:
    champion: int | None = None
    versions: list[ModelVersion] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def version(self, number: int) -> ModelVersion:
        return next(v for v in self.versions if v.version == number)


def read_registry(models_dir: Path) -> Registry:
    path = models_dir / REGISTRY
    if not path.is_file():
        return Registry()
    raw = json.loads(path.read_text())
    return Registry(
        champion=raw.get("champion"),
        versions=[ModelVersion(**v) for v in raw.get("versions", [])],
        decisions=[Decision(**d) for d in raw.get("decisions", [])],
    )


def write_registry(models_dir: Path, registry: Registry) -> None:
    write_json(asdict(registry), models_dir / REGISTRY)


@dataclass
class Predictions:
    """A model's class probabilities for the test images, preprocessed as it was trained."""

    classes: list[str]
    probs: np.ndarray  # (images, classes); NaN rows for images this model cannot read
    meta: dict = field(default_factory=dict)  # the model file's metadata (kind, thresholds)

    @property
    def readable(self) -> np.ndarray:
        return ~np.isnan(self.probs).any(axis=1)

    @property
    def task(self) -> SingleLabel:
        return task_named(self.meta.get("task"))


def predict_test(
    model_path: Path, test: pd.DataFrame, data_dir: Path, batch_size: int = 64
) -> Predictions:
    """Decode the raw data/ files of `test` with the model's own clean params and eval pipeline.

    Both come from model.pt (as in `visiontune predict`), so a champion trained with
    other preprocessing, or on another clean cache, is scored the way it was trained.
    """
    from tasks.predict import predict_files

    paths = [data_dir / rel for rel in test["path"]]
    probs, _, meta = predict_files(model_path, paths, batch_size=batch_size)
    return Predictions(list(meta["classes"]), probs, meta)


def metrics_on(
    pred: Predictions, test: pd.DataFrame, mask: np.ndarray, labels: list[str] | None = None
) -> dict[str, float]:
    """Metrics of `pred` on the test images selected by `mask` (each of a class it knows);
    multi-label models on the columns of `labels` only (default: all of theirs)."""
    rows, task = test[mask], pred.task
    labels = labels or pred.classes
    columns = [pred.classes.index(c) for c in labels]
    cut = pred.meta.get("thresholds")
    thresholds = None if cut is None else [cut[c] for c in columns]
    targets = np.asarray(task.targets(rows, labels))
    return task.metrics(pred.probs[mask][:, columns], targets, labels, thresholds, top_k=3)


@dataclass
class Comparison:
    """Challenger and champion on the test split: on what both can judge, and on the rest."""

    challenger: dict[str, float]  # every test image the challenger can classify
    champion_classes: list[str] | None = None
    shared_challenger: dict[str, float] | None = None  # on the images both can classify
    shared_champion: dict[str, float] | None = None
    compared: int = 0  # test images both models were scored on
    new_classes: list[str] = field(default_factory=list)  # test classes the champion lacks
    new_class_images: int = 0
    on_new_classes: dict[str, float] | None = None  # the challenger on those images
    removed_classes: list[str] = field(default_factory=list)  # the champion's, not the data's
    auto_metric: str = "accuracy"  # what `metric: auto` means for the kind (map_macro)


def compare_models(
    challenger_pt: Path, champion_pt: Path | None, split: pd.DataFrame, data_dir: Path
) -> Comparison:
    """Score both models on the same test images, each with its own preprocessing."""
    test = split[split["split"] == "test"].reset_index(drop=True)
    new = predict_test(challenger_pt, test, data_dir)
    task = new.task
    knows_new = task.judged_by(test, new.classes) & new.readable
    if not knows_new.any():
        raise ValueError(f"{challenger_pt} can classify none of the {len(test)} test images")
    comparison = Comparison(metrics_on(new, test, knows_new), auto_metric=task.decision_metric)
    if champion_pt is None:
        return comparison
    old = predict_test(champion_pt, test, data_dir)
    knows_old = task.judged_by(test, old.classes)
    shared = knows_new & knows_old & old.readable
    unknown = task.with_labels(test, set(task.classes(test)) - set(old.classes)) & knows_new
    both = task.shared_labels(new.classes, old.classes)
    comparison.champion_classes = list(old.classes)
    comparison.compared = int(shared.sum())
    comparison.new_classes = sorted(set(task.classes(test[unknown])) - set(old.classes))
    comparison.new_class_images = int(unknown.sum())
    comparison.removed_classes = sorted(set(old.classes) - set(new.classes))
    if shared.any() and both != []:
        comparison.shared_challenger = metrics_on(new, test, shared, both)
        comparison.shared_champion = metrics_on(old, test, shared, both)
    if unknown.any():
        on_new = task.shared_labels(new.classes, comparison.new_classes)
        comparison.on_new_classes = metrics_on(new, test, unknown, on_new)
    return comparison


def decision_metric(comparison: Comparison, params: RetrainParams) -> str:
    """retrain.metric, with `auto` as the kind means it (accuracy, or map_macro)."""
    return comparison.auto_metric if params.metric == "auto" else params.metric


def decide(comparison: Comparison, params: RetrainParams) -> tuple[bool, str]:
    """Promote only a challenger that beats the champion by more than the margin.

    When the test split holds classes the champion does not know, `params.new_classes`
    decides: promote (the default), compare_known (compare on the images of the classes
    both know), or reject (keep the champion). When the champion knows classes the data no
    longer has, `params.removed_classes` decides: promote (the default: the champion would
    go on predicting them) or compare (the margin rule; predicting one counts as wrong).
    """
    metric = decision_metric(comparison, params)
    if metric not in comparison.challenger:
        raise ValueError(
            f"retrain.metric {metric!r} is not in the metrics {list(comparison.challenger)}"
        )
    new = comparison.challenger[metric]
    if comparison.champion_classes is None:
        return True, f"no champion yet: the first model ({metric}={new:.4f}) is promoted"
    ours = (comparison.shared_challenger or {}).get(metric)
    theirs = (comparison.shared_champion or {}).get(metric)
    gain = None
    if ours is not None and theirs is not None:
        gain = ours - theirs if params.higher_is_better else theirs - ours
        verdict = (
            f"challenger {metric}={ours:.4f} vs champion {theirs:.4f} "
            f"(gain {gain:+.4f}, margin {params.margin:g})"
        )
    else:
        verdict = f"no {metric} for both models on a shared test image"
    removed = comparison.removed_classes
    rejecting = comparison.new_classes and params.new_classes == "reject"
    if removed and params.removed_classes == "promote" and not rejecting:
        return True, (
            f"promoted: classes {removed} are no longer in the data and the champion still "
            f"predicts them; {verdict}"
        )
    if comparison.new_classes:
        on_new = (comparison.on_new_classes or {}).get(metric)
        rest = (
            f"new classes {comparison.new_classes} ({comparison.new_class_images} test "
            f"image(s)"
            + (f", challenger {metric}={on_new:.4f} on them)" if on_new is not None else ")")
        )
        known = f"on the {comparison.compared} image(s) of known classes: {verdict}"
        if params.new_classes == "promote":
            return True, f"promoted: {rest}; {known}"
        if params.new_classes == "reject":
            return False, f"champion kept: {rest}, and new_classes is 'reject'; {known}"
        if gain is None:
            return True, f"promoted: {rest}; {known}"
        if gain > params.margin:
            return True, f"promoted {known}; not compared: {rest}"
        return False, f"champion kept {known}; not compared: {rest}"
    if gain is None:
        return True, f"promoted: {verdict}"
    if gain > params.margin:
        return True, f"promoted: {verdict}"
    return False, f"champion kept: {verdict}"


def promote(
    models_dir: Path,
    model_path: Path,
    metrics: dict[str, float],
    data_version: str | None,
    git_commit: str | None,
) -> int:
    """Copy the challenger into a new version and make it the champion (all or nothing)."""
    registry = read_registry(models_dir)
    versions_dir = models_dir / "versions"
    versions_dir.mkdir(parents=True, exist_ok=True)
    taken = [v.version for v in registry.versions] + [
        int(p.name[1:]) for p in versions_dir.glob("v*") if p.name[1:].isdigit()
    ]
    number = max(taken, default=0) + 1
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=versions_dir))
    try:
        shutil.copy2(model_path, staging / "model.pt")
        write_json(metrics, staging / "metrics.json")
        staging.rename(versions_dir / f"v{number}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    registry.versions.append(
        ModelVersion(
            version=number,
            path=f"versions/v{number}/model.pt",
            metrics=metrics,
            data_version=data_version,
            git_commit=git_commit,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
    )
    registry.champion = number
    write_registry(models_dir, registry)  # the commit point
    return number


def record_decision(models_dir: Path, decision: Decision) -> None:
    registry = read_registry(models_dir)
    registry.decisions.append(decision)
    write_registry(models_dir, registry)
