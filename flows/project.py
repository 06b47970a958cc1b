"""Where a visiontune project keeps things, relative to its root (where dvc.yaml is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from params import STAGE_MODELS, load_params
from params.schema import _Params

STAGES = ("clean", "split", "augment", "tune", "train", "evaluate")


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The nearest folder at or above `start` holding dvc.yaml (else `start` itself)."""
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "dvc.yaml").is_file():
                return cls(folder)
        return cls(here)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def prefect_home(self) -> Path:
        return self.root / ".prefect"

    def artifacts(self, stage: str) -> Path:
        return self.root / "artifacts" / stage

    def params_file(self, stage: str) -> Path:
        return self.root / "params" / f"{stage}.yaml"

    def params(self, stage: str) -> _Params:
        return load_params(STAGE_MODELS[stage], self.params_file(stage))

    def train_data(self, image_size: int | None = None):
        """What training reads: split, clean cache, saved pipelines, balance plan (if any)."""
        import pandas as pd

        from tasks.augment import load_pipeline
        from tasks.balance import BalancePlan
        from tasks.train import TrainData

        augment = self.artifacts("augment")
        if image_size is None:
            image_size = self.params("augment").image_size  # type: ignore[attr-defined]
        return TrainData(
            split=pd.read_parquet(self.artifacts("split") / "split.parquet"),
            clean_dir=self.artifacts("clean"),
            train_pipeline=load_pipeline(augment / "train.yaml"),
            eval_pipeline=load_pipeline(augment / "eval.yaml"),
            image_size=image_size,
            balance=BalancePlan.read(augment / "balance.json"),
            clean=self.params("clean"),  # type: ignore[arg-type]
            augment_device=self.params("augment").device,  # type: ignore[attr-defined]
        )

    def validate_all(self) -> dict[str, _Params]:
        """Every stage's params, so a bad value fails before any stage starts."""
        return {stage: self.params(stage) for stage in STAGES}

    @property
    def models(self) -> Path:
        """The model registry: registry.json and versions/v<N>/."""
        return self.root / "models"
