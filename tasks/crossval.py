"""k-fold cross-validation on the split's folds, fold ensembles and label issues.

Fold k trains on the train+val images whose `fold` is not k and validates on
those whose `fold` is k (the split stage assigns folds when params/split.yaml
sets `folds`). Each image then has an out-of-fold prediction: the fold scores
give mean ± std, and cleanlab's confident learning ranks the images whose
label the out-of-fold prediction confidently disputes. The fold models'
averaged test predictions (the best K by validation score) are compared with
the single models: the ensemble gain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from params import CrossvalParams, TrainParams
from tasks.inference import MODEL, predict_probs
from tasks.label_task import SingleLabel, metric_direction, task_named
from tasks.train import TrainData, fit


class CrossvalError(ValueError):
    pass


@dataclass
class FoldResult:
    fold: int
    n_train: int
    n_val: int
    best_epoch: int
    best_score: float
    metrics: dict[str, float]  # on the fold's held-out images
    oof_probs: np.ndarray
    test_probs: np.ndarray | None


@dataclass
class Crossval:
    folds: list[FoldResult]
    pool: pd.DataFrame  # train+val images with `fold`
    classes: list[str]
    summary: dict[str, float]
    ensemble: dict[str, float]
    label_issues: pd.DataFrame
    oof: pd.DataFrame


def fold_pool(split: pd.DataFrame) -> pd.DataFrame:
    """The train+val images with their fold; a clear error when the split has no folds."""
    if "fold" not in split.columns:
        raise CrossvalError(
            "artifacts/split/split.parquet has no `fold` column: set `folds: 5` (any K ≥ 2) "
            "in params/split.yaml and rerun the split stage (`visiontune run`)"
        )
    pool = split[split["split"].isin(["train", "val"]) & (split["fold"] >= 0)]
    n_folds = pool["fold"].nunique()
    if n_folds < 2:
        raise CrossvalError(f"cross-validation needs at least 2 folds, the split has {n_folds}")
    return pool.reset_index(drop=True)


def _probs(model_pt: Path, frame: pd.DataFrame, data: TrainData, batch_size: int) -> np.ndarray:
    return predict_probs(model_pt, frame, data.clean_dir, "cpu", batch_size)[0]


def _targets(frame: pd.DataFrame, classes: list[str], task: SingleLabel) -> np.ndarray:
    return np.asarray(task.targets(frame, classes))


def mean_std(
    rows: list[dict[str, float]], keys: tuple[str, ...] = SingleLabel.summary_keys
) -> dict[str, float]:
    out: dict[str, float] = {}
    for key in keys:
        values = [r[key] for r in rows if key in r]
        if values:
            out[f"{key}_mean"] = float(np.mean(values))
            out[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return out


def find_label_issues(
    pool: pd.DataFrame, oof_probs: np.ndarray, classes: list[str], limit: int
) -> pd.DataFrame:
    """Training images whose out-of-fold prediction confidently disagrees with their label."""
    from cleanlab.filter import find_label_issues as cleanlab_issues

    targets = _targets(pool, classes, SingleLabel())
    if limit == 0 or len(np.unique(targets)) < 2:
        return pd.DataFrame(columns=["path", "label", "suggested", "p_label", "p_suggested"])
    ranked = cleanlab_issues(
        labels=targets, pred_probs=oof_probs, return_indices_ranked_by="self_confidence"
    )[:limit]
    suggested = oof_probs[ranked].argmax(1)
    return pd.DataFrame(
        {
            "path": pool["path"].to_numpy()[ranked],
            "sha256": pool["sha256"].to_numpy()[ranked],
            "label": pool["label"].to_numpy()[ranked],
            "suggested": [classes[i] for i in suggested],
            "p_label": oof_probs[ranked, targets[ranked]].round(4),
            "p_suggested": oof_probs[ranked, suggested].round(4),
            "fold": pool["fold"].to_numpy()[ranked],
        }
    )


def find_multilabel_issues(
    pool: pd.DataFrame, oof_probs: np.ndarray, classes: list[str], limit: int
) -> pd.DataFrame:
    """Training images whose label set the out-of-fold predictions doubt, by cleanlab's
    multi-label mode: with the labels it would add and remove (out-of-fold p ≥ 0.5 / < 0.5)."""
    from cleanlab.multilabel_classification.filter import find_label_issues as issues
    from cleanlab.multilabel_classification.rank import get_label_quality_scores

    columns = ["path", "sha256", "labels", "suggested_add", "suggested_remove", "quality", "fold"]
    hot = _targets(pool, classes, task_named("multi_label")) > 0.5
    if limit == 0 or len(pool) < 2 or hot.all(0).all() or not hot.any():
        return pd.DataFrame(columns=columns)
    labels = [list(np.flatnonzero(row)) for row in hot]
    ranked = issues(labels=labels, pred_probs=oof_probs, return_indices_ranked_by="self_confidence")
    ranked = ranked[:limit]
    quality = get_label_quality_scores(labels, oof_probs)
    names = np.asarray(classes, dtype=object)
    predicted = oof_probs >= 0.5
    return pd.DataFrame(
        {
            "path": pool["path"].to_numpy()[ranked],
            "sha256": pool["sha256"].to_numpy()[ranked],
            "labels": pool["labels"].to_numpy()[ranked],
            "suggested_add": [" ".join(names[predicted[i] & ~hot[i]]) for i in ranked],
            "suggested_remove": [" ".join(names[hot[i] & ~predicted[i]]) for i in ranked],
            "quality": quality[ranked].round(4),
            "fold": pool["fold"].to_numpy()[ranked],
        },
        columns=columns,
    )


def ensemble_gain(
    folds: list[FoldResult],
    test: pd.DataFrame,
    classes: list[str],
    k: int | None,
    monitor: str,
    task: SingleLabel | None = None,
) -> dict[str, float]:
    """Test accuracy (multi-label: mAP) and log loss of the average of the best k fold models
    vs the single models."""
    task = task or SingleLabel()
    usable = [f for f in folds if f.test_probs is not None]
    if not usable or test.empty:
        return {}
    maximise = metric_direction(task.resolve(monitor)) == "maximize"
    ranked = sorted(usable, key=lambda f: -f.best_score if maximise else f.best_score)
    chosen = ranked[: k or len(ranked)]
    targets = _targets(test, classes, task)
    singles = [task.metrics(f.test_probs, targets, classes) for f in chosen]
    averaged = np.mean([f.test_probs for f in chosen], axis=0)
    ens = task.metrics(averaged, targets, classes)
    score = task.decision_metric  # accuracy | map_macro
    single_acc = float(np.mean([m[score] for m in singles]))
    single_loss = float(np.mean([m["log_loss"] for m in singles]))
    return {
        "models": len(chosen),
        "folds": [f.fold for f in chosen],  # type: ignore[dict-item]
        "metric": score,  # type: ignore[dict-item]
        f"test_{score}_single_mean": single_acc,
        f"test_{score}_ensemble": ens[score],
        f"{score}_gain": ens[score] - single_acc,
        "test_log_loss_single_mean": single_loss,
        "test_log_loss_ensemble": ens["log_loss"],
        "log_loss_gain": single_loss - ens["log_loss"],
    }


def run_crossval(
    train: TrainParams,
    cv: CrossvalParams,
    data: TrainData,
    out_dir: Path,
    on_fold: Callable[[FoldResult, int], None] | None = None,
    show_progress: bool = True,
) -> Crossval:
    """Train one model per fold (each resumable from out_dir/fold<k>), then score them."""
    pool = fold_pool(data.split)
    classes, task = data.classes, data.task
    params = train.model_copy(update={"epochs": cv.epochs} if cv.epochs else {})
    if params.head_epochs > params.epochs:
        params = params.model_copy(update={"freeze_epochs": params.epochs})
    test = data.part("test")
    fold_ids = sorted(int(f) for f in pool["fold"].unique())
    oof = np.zeros((len(pool), len(classes)))
    results: list[FoldResult] = []
    for k in fold_ids:
        held = (pool["fold"] == k).to_numpy()
        fold_dir = out_dir / f"fold{k}"
        fitted = fit(
            params,
            data,
            out_dir=fold_dir,
            show_progress=show_progress,
            train_part=pool[~held],
            val_part=pool[held],
        )
        probs = _probs(fold_dir / MODEL, pool[held], data, 64)
        oof[held] = probs
        metrics = task.metrics(probs, _targets(pool[held], classes, task), classes)
        result = FoldResult(
            fold=k,
            n_train=int((~held).sum()),
            n_val=int(held.sum()),
            best_epoch=fitted.best_epoch,
            best_score=fitted.best_score,
            metrics=metrics,
            oof_probs=probs,
            test_probs=_probs(fold_dir / MODEL, test, data, 64) if len(test) else None,
        )
        results.append(result)
        if on_fold:
            on_fold(result, len(fold_ids))
    oof_frame = pool[["path", task.column, "fold"]].copy()
    rows = [task.prediction_row(p, classes, 1) for p in oof]
    if "predicted" in rows[0]:
        oof_frame["predicted"] = [r["predicted"] for r in rows]
    else:
        oof_frame["predicted"] = [r["labels"] for r in rows]
    for i, c in enumerate(classes):
        oof_frame[f"p_{c}"] = oof[:, i].round(4)
    return Crossval(
        folds=results,
        pool=pool,
        classes=classes,
        summary={"folds": len(results)} | mean_std([r.metrics for r in results], task.summary_keys),
        ensemble=ensemble_gain(results, test, classes, cv.ensemble_k, params.monitor, task),
        label_issues=task.label_issues(pool, oof, classes, cv.label_issues),
        oof=oof_frame,
    )


def describe(summary: dict, ensemble: dict) -> list[str]:
    """The summary as lines of 'metric: mean ± std' plus the ensemble's gain, if any."""
    lines = [
        f"{key.removesuffix('_mean')}: {value:.4f} ± {summary[key[:-5] + '_std']:.4f}"
        for key, value in summary.items()
        if key.endswith("_mean")
    ]
    if ensemble:
        score = ensemble.get("metric", "accuracy")
        lines.append(
            f"ensemble of {ensemble['models']} fold models on the test split: {score} "
            f"{ensemble[f'test_{score}_ensemble']:.4f} vs "
            f"{ensemble[f'test_{score}_single_mean']:.4f} for one model "
            f"({ensemble[f'{score}_gain']:+.4f}); log loss "
            f"{ensemble['test_log_loss_ensemble']:.4f} vs "
            f"{ensemble['test_log_loss_single_mean']:.4f}"
        )
    return lines
