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

import pandas as pd
import torch

from params import AugmentParams, RetrainParams
from tasks.files import write_json

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


def score_on_test(model_path: Path, split: pd.DataFrame, clean_dir: Path) -> dict[str, float]:
    """Test-split metrics of a model file, preprocessed the way that model was trained."""
    from tasks.augment import build_pipelines
    from tasks.dataset import CachedImages, make_loader
    from tasks.evaluate import evaluate_predictions
    from tasks.train import load_model, predict_logits

    net, meta = load_model(model_path)
    _, eval_pipe = build_pipelines(
        AugmentParams(image_size=meta["image_size"]), tuple(meta["mean"]), tuple(meta["std"])
    )
    test = split[split["split"] == "test"]
    unknown = set(test["label"]) - set(meta["classes"])
    if unknown:
        raise ValueError(f"{model_path} does not know the test classes {sorted(unknown)}")
    dataset = CachedImages(test, clean_dir, eval_pipe, meta["classes"])
    logits, targets = predict_logits(
        net, make_loader(dataset, 64, False, 0, 0), torch.device("cpu")
    )
    probs = torch.softmax(logits, 1).numpy()
    ev = evaluate_predictions(probs, targets.numpy(), meta["classes"], test["path"].tolist(), 3)
    return ev.metrics


def decide(
    challenger: dict[str, float], champion: dict[str, float] | None, params: RetrainParams
) -> tuple[bool, str]:
    """Promote only a challenger that beats the champion by more than the margin."""
    if params.metric not in challenger:
        raise ValueError(
            f"retrain.metric {params.metric!r} is not in the metrics {list(challenger)}"
        )
    new = challenger[params.metric]
    if champion is None:
        return True, f"no champion yet: the first model ({params.metric}={new:.4f}) is promoted"
    old = champion[params.metric]
    gain = new - old if params.higher_is_better else old - new
    verdict = (
        f"challenger {params.metric}={new:.4f} vs champion {old:.4f} "
        f"(gain {gain:+.4f}, margin {params.margin:g})"
    )
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
