"""Single-label or multi-label: everything the two kinds of classification differ in.

One object per kind owns the label column, the targets, the loss, the activation,
what an epoch scores, the decision rule (argmax, or a threshold per label chosen on
the validation split) and the metric `auto` means. Every stage asks the object its
data implies (`task_of(frame)`: a `labels` column means multi-label) instead of
branching on the kind itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import pandas as pd

from tasks import multilabel

if TYPE_CHECKING:  # torch is imported where it is used: clean and split never load it
    import torch
    from torch import nn

    from params.schema import KindRecipe

    P = TypeVar("P", bound=KindRecipe)
from tasks.files import printable
from tasks.multilabel import join_set, split_set
from tasks.sources import IMAGES_FOLDER, SOURCES_FILE, data_task


@dataclass
class Validation:
    """One validation pass: the loss, the scores an epoch records, and per image how well
    the model did (hits or ranking precision), which the search compares trial by trial."""

    loss: float
    scores: dict[str, float]
    per_image: np.ndarray
    decision: dict = field(default_factory=dict)  # what the model decides with (thresholds)


# a file rejected before any rule: (path, reason, detail)
Problem = tuple[str, str, str]
RARE_LABEL = 10  # multi-label: a label on fewer kept images than this is warned about
# the reasons only multi-label data can give (tasks/clean_rules.py REASONS has the others)
MULTI_LABEL_REASONS = {
    "no_label": "multi-label data: no row in data/sources.csv, an empty set (collected "
    "without --allow-empty), or a file outside data/_images/",
}
# a label with fewer validation positives than this gets the global threshold
MIN_POSITIVES = 5
# a label's own cut is pulled towards the global one as if it had this many more positives:
# best-F1 cuts on a few val positives lowered test micro-F1 below one global cut
PRIOR = 20


def metric_direction(name: str) -> str:
    """Losses are minimised, every other metric is maximised."""
    return "minimize" if name.endswith("loss") else "maximize"


class SingleLabel:
    """One class per image: softmax, cross-entropy, argmax."""

    kind = "single_label"
    column = "label"  # the split table's label column
    primary = "val_accuracy"  # what `monitor: auto` / `metric: auto` mean
    decision_metric = "accuracy"  # the metrics.json key retraining decides on under `auto`
    activation_name = "softmax"
    calibration_axis = ("confidence (top-1 probability)", "images")  # reliability.png's
    confusion_title = "test confusion matrix"

    noun, nouns, some = "class", "classes", "class(es)"  # in summaries and warnings
    summary_keys = ("accuracy", "f1_macro", "log_loss", "ece")  # crossval's mean ± std
    refits = True  # `refit: auto` after a search moves val into train
    label_smoothing = 0.1  # what `label_smoothing: auto` means

    def classes(self, frame: pd.DataFrame) -> list[str]:
        return sorted(frame["label"].unique())

    def examples(self, train: pd.DataFrame) -> dict[str, str]:
        """{class: sha256 of its first train image}: the augment preview's rows."""
        return {
            label: train.loc[train["label"] == label, "sha256"].iloc[0]
            for label in self.classes(train)
        }

    def class_labels(self, frame: pd.DataFrame, classes: list[str]) -> list[str]:
        """Each class as its user named it: the most common original label of its images."""
        if "original_label" not in frame.columns:
            return classes
        named = frame[frame["original_label"].fillna("") != ""]
        common = named.groupby("label")["original_label"].agg(lambda s: s.value_counts().index[0])
        return [common.get(c, c) for c in classes]

    def targets(self, frame: pd.DataFrame, classes: Sequence[str]) -> list[int]:
        """Class indices; a label `classes` lacks gets an index ≥ len(classes)."""
        index = {name: i for i, name in enumerate(classes)}
        for extra in sorted(set(frame["label"]) - set(index)):
            index[extra] = len(index)
        return [index[label] for label in frame["label"]]

    def resolve(self, metric: str) -> str:
        return self.primary if metric == "auto" else metric

    def smoothing(self, value: float | str) -> float:
        """train.yaml's label_smoothing, with `auto` as the kind means it."""
        return self.label_smoothing if value == "auto" else float(value)

    def recipe(self, params: P) -> P:
        """train.yaml or augment.yaml as this kind uses it (single-label: as written)."""
        return params

    def prior_bias(self, targets, n_classes: int) -> np.ndarray:
        """The head bias whose softmax is the train split's class shares (each class counted
        once more, so none starts at -inf)."""
        index = np.asarray(targets, dtype=np.int64)
        counts = np.bincount(index[index < n_classes], minlength=n_classes) + 1.0
        return np.log(counts / counts.sum())

    def balance(self, train: pd.DataFrame) -> dict:
        """The balance plan's counts and "balanced" weights (tasks/balance.py)."""
        from sklearn.utils.class_weight import compute_class_weight

        y = train["label"].astype(str)
        labels = np.array(sorted(y.unique()))
        counts = y.value_counts()
        weights = compute_class_weight("balanced", classes=labels, y=y.to_numpy())
        return {
            "class_counts": {str(lb): int(counts[lb]) for lb in labels},
            "class_weights": {str(lb): float(w) for lb, w in zip(labels, weights, strict=True)},
        }

    def image_weights(self, targets, per_class: list[float]) -> tuple[list[float], int]:
        """(each image's sampling weight, the largest class's image count)."""
        return [per_class[t] for t in targets], int(np.bincount(np.asarray(targets)).max())

    def loss(self, label_smoothing: float, weight: torch.Tensor | None) -> nn.Module:
        from torch import nn

        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(right decisions, decisions) of a training batch, left on the device."""
        return (logits.argmax(1) == labels).sum(), len(labels)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(1)

    def merge_tta(self, logits: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        """Logits whose activation is the mean probability of an image and its mirror."""
        probs = (logits.softmax(1) + mirrored.softmax(1)) / 2
        return probs.clamp_min(1e-12).log()

    def payload(self) -> dict:
        """What model.pt records about the kind (nothing: single-label is the default)."""
        return {}

    def decisions(self, logits: np.ndarray, thresholds=None) -> np.ndarray:
        """What a model decides from its logits: the class index per image."""
        return np.asarray(logits).argmax(1)

    def truth(self, targets: np.ndarray) -> np.ndarray:
        """Targets in the form `decisions` takes."""
        return np.asarray(targets)

    def evaluate(self, probs, targets, labels: list[str], paths: list[str], params, meta: dict):
        """The test split's Evaluation (tasks/evaluate.py) under evaluate.yaml's `params`."""
        from tasks.evaluate import evaluate_predictions

        return evaluate_predictions(
            probs, targets, labels, paths, params.top_k, params.calibration_bins
        )

    def headline(self, ev) -> str:
        from tasks.evaluate import headline

        return headline(ev.metrics, ev.per_class)

    def metrics(
        self, probs, targets, labels: list[str], thresholds=None, top_k: int = 1
    ) -> dict[str, float]:
        """Held-out metrics without the tables (cross-validation folds, model comparisons)."""
        from tasks.evaluate import evaluate_predictions

        return evaluate_predictions(probs, targets, labels, [""] * len(targets), top_k).metrics

    def judged_by(self, test: pd.DataFrame, classes: list[str]) -> np.ndarray:
        """The test images a model with `classes` can be judged on: those of a class it knows."""
        return test["label"].isin(classes).to_numpy()

    def with_labels(self, frame: pd.DataFrame, labels: set[str]) -> np.ndarray:
        """The images that have one of `labels`."""
        return frame["label"].isin(labels).to_numpy()

    def shared_labels(self, ours: list[str], theirs: list[str]) -> list[str] | None:
        """The labels two models are compared on (None: each on all of its classes)."""
        return None

    # --- the split stage (tasks/split.py) ---
    stable_by_key = True  # each key's split is its own hash draw: no previous split needed

    def splittable(self, manifest: pd.DataFrame) -> str | None:
        """Why the manifest cannot be split into something to learn, or None."""
        classes = sorted(manifest["label"].unique())
        if len(classes) < 2:
            return (
                f"only one class has usable images ({classes[0]}: {len(manifest)}): a "
                "classifier needs at least two; collect images of another class"
            )
        return None

    def per_class(self, frame: pd.DataFrame) -> pd.Series:
        """Images per class."""
        return frame["label"].value_counts()

    def crosstab(self, frame: pd.DataFrame, by: str, order: Sequence) -> pd.DataFrame:
        """Images per class (rows) and value of `by` (columns, in `order`)."""
        return pd.crosstab(frame["label"], frame[by]).reindex(columns=order, fill_value=0)

    def assign_splits(
        self, manifest, keys, free, share, params, pinned, previous, messages
    ) -> pd.Series:
        """Each image's split among the `free` ones (tasks/split.py: plan_splits)."""
        from tasks.split import hash_splits

        return hash_splits(keys, free, share, params)

    def assign_folds(self, out, keys, params, previous) -> pd.Series:
        from tasks.split import hash_folds

        return hash_folds(keys, params)

    def label_issues(self, pool, oof: np.ndarray, labels: list[str], limit: int) -> pd.DataFrame:
        """Training images whose out-of-fold predictions doubt their label (cleanlab)."""
        from tasks.crossval import find_label_issues

        return find_label_issues(pool, oof, labels, limit)

    def issue_caption(self, row) -> str:
        return f"{row.label} → {row.suggested}? ({row.p_suggested:.2f})"

    def prediction_row(
        self, probs: np.ndarray, labels: list[str], top_k: int, thresholds=None
    ) -> dict:
        """What predictions.csv holds for one image: the class, its confidence, the top k."""
        import torch

        top = torch.from_numpy(probs).topk(max(1, min(top_k, len(labels))))
        row: dict = {
            "predicted": labels[int(top.indices[0])],
            "confidence": round(float(top.values[0]), 4),
        }
        for rank, (v, c) in enumerate(zip(top.values, top.indices, strict=True), start=1):
            row[f"top{rank}"] = labels[int(c)]
            row[f"p{rank}"] = round(float(v), 4)
        return row

    def score(
        self, rows: pd.DataFrame, truth: list[list[str]], labels: list[str], thresholds=None
    ) -> str:
        """One line scoring predict's rows of images whose answer is known (`truth`: each
        image's label, in a list)."""
        right = sum(p == t[0] for p, t in zip(rows["predicted"], truth, strict=True))
        return f"accuracy {right / len(truth):.3f} ({len(truth) - right} wrong)"

    def validate(self, logits: torch.Tensor, targets: torch.Tensor) -> Validation:
        from torch.nn.functional import cross_entropy

        loss = cross_entropy(logits, targets).item()
        hits = (logits.argmax(1) == targets).cpu().numpy()
        return Validation(loss, {"val_accuracy": float(hits.mean())}, hits)

    # --- the clean stage: which files are labelled how (data/<label>/ or data/_images/) ---
    def labelled(
        self, data_dir: Path, listed: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[Problem]]:
        """(path, label) of the files to clean, and those rejected for their label."""
        return listed, []

    def screen(self, label: str, allowed: set[str] | None) -> tuple[str, str | None]:
        """The label as clean.yaml `classes` leaves it, and why the file is rejected if so."""
        if allowed is not None and label not in allowed:
            return label, f"{label!r} is not in `classes`"
        return label, None

    def counts(self, labels: Iterable[str]) -> dict[str, int]:
        """Images per label."""
        counts: dict[str, int] = {}
        for label in labels:
            counts[printable(label)] = counts.get(printable(label), 0) + 1
        return counts

    def manifest(
        self, manifest: pd.DataFrame, sources: pd.DataFrame | None
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """The manifest's label columns, and the sources.csv columns left to join on `path`."""
        return manifest, sources

    def warnings(self, table: pd.DataFrame) -> list[str]:
        """Warnings about the per-label table beyond the empty classes and the imbalance."""
        return []


@dataclass(frozen=True)
class MultiLabel(SingleLabel):
    """A set of labels per image (possibly empty): sigmoid, BCE, a threshold per label."""

    kind = "multi_label"
    column = "labels"
    primary = "val_map"
    decision_metric = "map_macro"
    activation_name = "sigmoid"
    calibration_axis = ("predicted probability of a label", "image × label pairs")
    confusion_title = "label co-occurrence: actual label × predicted label"

    noun, nouns, some = "label", "labels", "label(s)"
    allow_empty: bool = False  # data/task.json: images with no label train as negatives
    summary_keys = ("map_macro", "f1_micro", "log_loss", "ece")
    refits = False  # val picks each label's threshold: `refit: on` leaves every one at 0.5
    label_smoothing = 0.0  # smoothing towards ½ lowered test mAP (docs/measurements.md)
    PREVIEW_LABELS = 12  # the preview shows the most frequent labels only

    def classes(self, frame: pd.DataFrame) -> list[str]:
        return multilabel.label_classes(_sets(frame))

    def examples(self, train: pd.DataFrame) -> dict[str, str]:
        labels = self.classes(train)
        hot = self.targets(train, labels) > 0
        frequent = sorted(np.argsort(-hot.sum(0), kind="stable")[: self.PREVIEW_LABELS])
        shas = train["sha256"].to_numpy()
        return {labels[j]: shas[hot[:, j].argmax()] for j in frequent}

    def class_labels(self, frame: pd.DataFrame, classes: list[str]) -> list[str]:
        """Each label as its user named it (original_labels holds the names in set order)."""
        if "original_labels" not in frame.columns:
            return classes
        named: dict[str, str] = {}
        for safe, original in zip(frame["labels"], frame["original_labels"], strict=True):
            if not isinstance(original, str) or not original:
                continue
            for s, o in zip(multilabel.split_set(safe), json.loads(original), strict=False):
                named.setdefault(s, o)
        return [named.get(c, c) for c in classes]

    def targets(self, frame: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
        """Multi-hot rows over `classes` (labels `classes` lacks are dropped)."""
        return multilabel.multi_hot(_sets(frame), classes)

    def loss(self, label_smoothing: float, weight: torch.Tensor | None) -> nn.Module:
        from tasks.losses import SmoothedBCE

        return SmoothedBCE(label_smoothing, weight)

    def recipe(self, params: P) -> P:
        """The file's `multi_label:` values in place of its own (docs/measurements.md)."""
        return params.multi_label_recipe()

    def prior_bias(self, targets, n_classes: int) -> np.ndarray:
        """Each label's log-odds on train (RetinaNet's prior initialisation; half a positive
        added, so none starts at ±inf): BCE's first steps then see base rates already met."""
        hot = np.asarray(targets, dtype=np.float64).reshape(-1, n_classes)
        share = (hot.sum(0) + 0.5) / (len(hot) + 1.0)
        return np.log(share / (1 - share))

    def balance(self, train: pd.DataFrame) -> dict:
        """Positives per label, n / (n_labels × positives), and BCE's pos_weight per label."""
        labels = self.classes(train)
        hot = self.targets(train, labels)
        counts = hot.sum(0).astype(int)
        weights = len(train) / (len(labels) * np.maximum(counts, 1).astype(np.float64))
        return {
            "class_counts": dict(zip(labels, map(int, counts), strict=True)),
            "class_weights": dict(zip(labels, map(float, weights), strict=True)),
            "pos_weights": dict(
                zip(labels, map(float, multilabel.pos_weights(hot > 0)), strict=True)
            ),
        }

    def image_weights(self, targets, per_class: list[float]) -> tuple[list[float], int]:
        """An image weighs what its rarest label does (an empty set: the lightest label)."""
        hot = np.asarray(targets) > 0.5
        weights = np.asarray(per_class, dtype=np.float64)
        per_image = np.where(hot, weights, -np.inf).max(1)
        per_image[~hot.any(1)] = weights.min()
        return per_image.tolist(), int(hot.sum(0).max())

    def correct(self, logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
        return ((logits > 0) == (labels > 0.5)).sum(), labels.numel()

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def merge_tta(self, logits: torch.Tensor, mirrored: torch.Tensor) -> torch.Tensor:
        probs = (logits.sigmoid() + mirrored.sigmoid()) / 2
        return probs.clamp(1e-6, 1 - 1e-6).logit()

    def payload(self) -> dict:
        return {"task": self.kind}

    def decisions(self, logits: np.ndarray, thresholds=None) -> np.ndarray:
        """Each label present or not (image × label), at the model's thresholds."""
        cut = 0.5 if thresholds is None else np.asarray(thresholds)
        return 1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64))) >= cut

    def truth(self, targets: np.ndarray) -> np.ndarray:
        return np.asarray(targets) > 0.5

    def evaluate(self, probs, targets, labels: list[str], paths: list[str], params, meta: dict):
        from tasks.evaluate import evaluate_multilabel

        ev = evaluate_multilabel(
            probs, targets, labels, paths, meta.get("thresholds"), params.calibration_bins
        )
        if meta.get("threshold_f1") is not None:  # what the thresholds gave on validation
            ev.metrics["val_f1_micro"] = meta["threshold_f1"]
        return ev

    def headline(self, ev) -> str:
        from tasks.evaluate import headline_multilabel

        return headline_multilabel(ev.metrics, ev.per_class)

    def metrics(
        self, probs, targets, labels: list[str], thresholds=None, top_k: int = 1
    ) -> dict[str, float]:
        from tasks.evaluate import evaluate_multilabel

        return evaluate_multilabel(probs, targets, labels, [""] * len(targets), thresholds).metrics

    def judged_by(self, test: pd.DataFrame, classes: list[str]) -> np.ndarray:
        """Every image: a model is judged on the labels it knows."""
        return np.ones(len(test), dtype=bool)

    def with_labels(self, frame: pd.DataFrame, labels: set[str]) -> np.ndarray:
        return np.array([bool(labels & set(split_set(s))) for s in _sets(frame)], dtype=bool)

    def shared_labels(self, ours: list[str], theirs: list[str]) -> list[str] | None:
        return [c for c in ours if c in set(theirs)]

    # --- the split stage ---
    stable_by_key = False  # iterative stratification: stable through the previous split

    def splittable(self, manifest: pd.DataFrame) -> str | None:
        sets = _sets(manifest)
        labels = multilabel.label_classes(sets)
        if not labels:
            return (
                f"none of the {len(manifest)} usable image(s) has a label: collect labelled images"
            )
        if len(labels) == 1 and all(sets):
            return (
                f"every usable image has the one label {labels[0]!r} and nothing else "
                f"({len(manifest)} image(s)): there is nothing to tell apart; collect images "
                "with other labels, or without it"
            )
        return None

    def per_class(self, frame: pd.DataFrame) -> pd.Series:
        """Images per label."""
        sets = _sets(frame)
        labels = multilabel.label_classes(sets)
        return pd.Series(multilabel.multi_hot(sets, labels).sum(0).astype(np.int64), index=labels)

    def crosstab(self, frame: pd.DataFrame, by: str, order: Sequence) -> pd.DataFrame:
        return multilabel.label_counts(frame, by, order)

    def assign_splits(
        self, manifest, keys, free, share, params, pinned, previous, messages
    ) -> pd.Series:
        from tasks.split import stratified_splits

        return stratified_splits(manifest, keys, free, share, params, pinned, previous, messages)

    def assign_folds(self, out, keys, params, previous) -> pd.Series:
        from tasks.split import stratified_folds

        return stratified_folds(out, keys, params, previous)

    def label_issues(self, pool, oof: np.ndarray, labels: list[str], limit: int) -> pd.DataFrame:
        from tasks.crossval import find_multilabel_issues

        return find_multilabel_issues(pool, oof, labels, limit)

    def issue_caption(self, row) -> str:
        add = f" +{row.suggested_add}" if row.suggested_add else ""
        remove = f" −{row.suggested_remove}" if row.suggested_remove else ""
        return f"{row.labels}{add}{remove}? ({row.quality:.2f})"

    def prediction_row(
        self, probs: np.ndarray, labels: list[str], top_k: int, thresholds=None
    ) -> dict:
        """The predicted set (the user's label names; `|` between them where one has a
        space) and every label's probability."""
        cut = 0.5 if thresholds is None else np.asarray(thresholds)
        chosen = [name for name, yes in zip(labels, probs >= cut, strict=True) if yes]
        sep = "|" if any(" " in name for name in labels) else " "
        return {"labels": sep.join(chosen)} | {
            f"p_{name}": round(float(p), 4) for name, p in zip(labels, probs, strict=True)
        }

    def score(
        self, rows: pd.DataFrame, truth: list[list[str]], labels: list[str], thresholds=None
    ) -> str:
        """`truth`: each image's label set (the user's names)."""
        probs = rows[[f"p_{name}" for name in labels]].to_numpy(np.float64)
        hot = np.array([[name in set(t) for name in labels] for t in truth], dtype=np.float32)
        cut = np.broadcast_to(0.5 if thresholds is None else np.asarray(thresholds), len(labels))
        m, _ = multilabel.multilabel_metrics(probs, hot, cut, labels)
        return (
            f"mAP {m['map_macro']:.3f} (macro), micro-F1 {m['f1_micro']:.3f}, samples-F1 "
            f"{m['f1_samples']:.3f}, subset accuracy {m['subset_accuracy']:.3f}"
        )

    def validate(self, logits: torch.Tensor, targets: torch.Tensor) -> Validation:
        targets = targets.float()
        from torch.nn.functional import binary_cross_entropy_with_logits

        loss = binary_cross_entropy_with_logits(logits, targets).item()
        probs, truth = logits.sigmoid().numpy(), targets.numpy()
        thresholds, fallback = multilabel.fit_thresholds(probs, truth, MIN_POSITIVES, PRIOR)
        scored = multilabel.multilabel_metrics(
            probs, truth, thresholds, list(range(truth.shape[1]))
        )
        scores = {
            "val_accuracy": float(((probs >= 0.5) == (truth > 0.5)).mean()),
            "val_map": scored[0]["map_macro"],
        }
        decision = {
            "thresholds": [round(float(t), 6) for t in thresholds],
            "global_threshold": float(fallback),
            "threshold_f1": scored[0]["f1_micro"],
        }
        return Validation(loss, scores, multilabel.lrap_per_image(probs, truth), decision)

    # --- the clean stage ---
    def labelled(
        self, data_dir: Path, listed: list[tuple[str, str]]
    ) -> tuple[list[tuple[str, str]], list[Problem]]:
        sets = _source_sets(data_dir)
        files: list[tuple[str, str]] = []
        problems: list[Problem] = []
        for rel, folder in listed:
            cell = sets.get(rel)
            if folder != IMAGES_FOLDER:
                problems.append((rel, "no_label", f"multi-label images are in {IMAGES_FOLDER}/"))
            elif cell is None:
                problems.append((rel, "no_label", f"no row in data/{SOURCES_FILE}"))
            elif not cell and not self.allow_empty:
                detail = "an empty label set (data/task.json: allow_empty is false)"
                problems.append((rel, "no_label", detail))
            else:
                files.append((rel, cell))
        return files, problems

    def screen(self, label: str, allowed: set[str] | None) -> tuple[str, str | None]:
        """The set without the labels `classes` leaves out; a set left empty is rejected unless
        empty sets are allowed."""
        if allowed is None:
            return label, None
        labels = split_set(label)
        kept = join_set(lb for lb in labels if lb in allowed)
        if labels and not kept and not self.allow_empty:
            return kept, f"none of its labels {labels} is in `classes`"
        return kept, None

    def counts(self, labels: Iterable[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for cell in labels:
            for label in split_set(cell):
                counts[label] = counts.get(label, 0) + 1
        return counts

    def manifest(
        self, manifest: pd.DataFrame, sources: pd.DataFrame | None
    ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
        """`labels` (the kept set) and `original_labels` (the user's names of those labels, a
        JSON list in the same order) in place of `label` and `original_label`."""
        manifest = manifest.rename(columns={"label": "labels"})
        names: dict[str, dict[str, str]] = {}
        if sources is not None and {"labels", "original_labels"} <= set(sources.columns):
            for path, cell, originals in zip(
                sources["path"], sources["labels"], sources["original_labels"], strict=True
            ):
                names[path] = dict(zip(split_set(cell), _json_list(originals), strict=False))
            sources = sources.drop(columns=["labels", "original_labels"])
        manifest.insert(
            list(manifest.columns).index("dup_group") + 1,
            "original_labels",
            [
                json.dumps(
                    [names.get(path, {}).get(lb, lb) for lb in split_set(cell)], ensure_ascii=False
                )
                for path, cell in zip(manifest["path"], manifest["labels"], strict=True)
            ],
        )
        return manifest, sources

    def warnings(self, table: pd.DataFrame) -> list[str]:
        rare = table[(table["kept"] > 0) & (table["kept"] < RARE_LABEL)]
        if rare.empty:
            return []
        counts = ", ".join(f"{r.label} {r.kept}" for r in rare.itertuples())
        return [
            f"rare label(s): {counts} kept image(s), fewer than {RARE_LABEL}: too few to learn "
            "or to measure; collect more, or drop them with clean.yaml `classes`"
        ]


def _sets(frame: pd.DataFrame) -> list[str]:
    """The `labels` column as canonical set strings (a missing cell: the empty set)."""
    labels = frame["labels"]
    return labels.astype(object).where(labels.notna(), "").astype(str).str.strip().tolist()


def _source_sets(data_dir: Path) -> dict[str, str]:
    """{path: canonical set string} from data/sources.csv (empty without a `labels` column)."""
    path = data_dir / SOURCES_FILE
    if not path.is_file():
        return {}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if not {"path", "labels"} <= set(frame.columns):
        return {}
    return {p: join_set(split_set(c)) for p, c in zip(frame["path"], frame["labels"], strict=True)}


def _json_list(text: str) -> list[str]:
    try:
        value = json.loads(text or "[]")
    except ValueError:
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


LabelTask = SingleLabel  # the interface; MultiLabel overrides what differs
SINGLE, MULTI = SingleLabel(), MultiLabel()


def task_of(frame: pd.DataFrame) -> SingleLabel:
    """The kind a manifest or split table holds: a `labels` column is multi-label."""
    return MULTI if "labels" in frame.columns else SINGLE


def task_of_data(data_dir: Path | None) -> SingleLabel:
    """The kind of data/: multi-label when data/task.json says so, else single-label."""
    task = data_task(data_dir) if data_dir is not None else None
    if task is None:
        return SINGLE
    return MultiLabel(allow_empty=task["allow_empty"])


def task_named(kind: str | None) -> SingleLabel:
    """The kind a model file or an export's metadata names (none: single-label)."""
    return MULTI if kind == MULTI.kind else SINGLE
