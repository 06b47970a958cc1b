"""Pydantic models for every stage's YAML.

They are the single source of truth for parameter names, defaults and limits:
the CLI validates with them before any work starts, and the Prefect flows take
them as parameters so the UI renders typed forms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CleanParams(_Params):
    """Decode, orient, convert and resize every raw image into the cache."""

    max_side: int = Field(128, ge=16, le=4096, description="longest side of cached images (px)")
    min_side: int = Field(8, ge=1, description="images with a shorter side are rejected")
    background: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB colour that transparent pixels are composited on"
    )
    max_pixels: int = Field(
        89_478_485, ge=1, description="decompression-bomb limit (Pillow's default)"
    )


class SplitParams(_Params):
    """Stable, stratified train/val/test assignment."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self


class AugmentParams(_Params):
    """Albumentations pipelines; `mean`/`std` 'auto' follow the model in train.yaml."""

    image_size: int = Field(96, ge=16, le=1024, description="side of the square model input")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    rotate_limit: int = Field(15, ge=0, le=180, description="max rotation in degrees")
    scale_min: float = Field(0.7, gt=0, le=1, description="RandomResizedCrop's smallest area")
    color_jitter: float = Field(0.2, ge=0, le=1, description="brightness/contrast/saturation")
    mean: tuple[float, float, float] | Literal["auto"] = "auto"
    std: tuple[float, float, float] | Literal["auto"] = "auto"
    preview_per_class: int = Field(4, ge=1, le=32)
    seed: int = 0


class TrainParams(_Params):
    """Fine-tuning recipe: head first, then backbone stages unfrozen from the top at lower LRs."""

    # model
    model: str = Field(
        "efficientnet_lite0",
        description="efficientnet_lite0 (offline weights) or a torchvision model name",
    )
    weights: str = Field(
        "default",
        description="'default' (pretrained), 'none' (random init) or a path to a weights file",
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the new head")
    # schedule of what trains
    epochs: int = Field(6, ge=1, le=1000)
    freeze_epochs: int = Field(2, ge=0, description="head-only epochs with the backbone frozen")
    unfreeze_stages: int = Field(
        0,
        ge=0,
        description="backbone stages unfrozen per epoch after freeze_epochs, from the top "
        "(gradual unfreezing); 0 = all at once",
    )
    batchnorm: Literal["frozen", "adapt"] = Field(
        "frozen",
        description="backbone BatchNorm: frozen = running statistics never move (eval mode); "
        "adapt = batch statistics and updated running statistics, even in frozen stages",
    )
    # optimizer and LR
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    nesterov: bool = Field(True, description="SGD with Nesterov momentum")
    lr: float = Field(3e-3, gt=0, le=10, description="head LR (peak)")
    backbone_lr_mult: float = Field(
        0.1, gt=0, le=1, description="top backbone stage LR = lr × this"
    )
    layer_lr_decay: float = Field(
        1.0, gt=0, le=1, description="each lower backbone stage's LR = the stage above's × this"
    )
    weight_decay: float = Field(1e-4, ge=0, le=1, description="never applied to norms and biases")
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(
        0.5, ge=0, description="linear warmup (cosine/constant) or the rising part of the one-cycle"
    )
    # regularisation
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0, description="MixUp Beta(α, α); 0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix Beta(α, α); 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="share of batches mixed when on")
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="EMA of the weights (validated and saved); 0 = off"
    )
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    # early stopping and the kept model
    monitor: Literal["val_loss", "val_accuracy"] = Field(
        "val_accuracy",
        description="picks the kept epoch (an accuracy tie goes to the lower val loss) and "
        "drives early stopping",
    )
    patience: int = Field(3, ge=1, description="epochs without improvement before stopping")
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as better")
    # data loading and speed
    batch_size: int = Field(32, ge=1, le=4096)
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader workers; auto = 0 on CPU, min(8, cores - 1) on CUDA"
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA (fp16 + GradScaler without bf16), off elsewhere"
    )
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="auto: on with CUDA")
    compile: bool = Field(False, description="torch.compile the model")
    seed: int = 0

    @model_validator(mode="after")
    def _freeze_within_epochs(self) -> TrainParams:
        if self.freeze_epochs > self.epochs:
            raise ValueError(
                f"freeze_epochs ({self.freeze_epochs}) cannot exceed epochs ({self.epochs})"
            )
        return self


class FloatRange(_Params):
    low: float = Field(gt=0)
    high: float = Field(gt=0)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        return self


class IntRange(_Params):
    low: int = Field(ge=0)
    high: int = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self


class TuneParams(_Params):
    """Optuna search over the train recipe; `n_trials: 0` passes train.yaml through."""

    n_trials: int = Field(0, ge=0)
    epochs: int = Field(2, ge=1, description="epochs per trial")
    timeout: float | None = Field(None, gt=0, description="seconds for the whole search")
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    storage: str | None = Field(None, description="Optuna RDB URL; default SQLite in artifacts")
    seed: int = 0
    lr: FloatRange = FloatRange(low=3e-4, high=1e-2)
    weight_decay: FloatRange = FloatRange(low=1e-6, high=1e-2)
    freeze_epochs: IntRange = IntRange(low=0, high=1)
    pruner_warmup_epochs: int = Field(1, ge=0)


class EvaluateParams(_Params):
    """Test-split metrics, plots and the misclassified gallery."""

    batch_size: int = Field(64, ge=1)
    top_k: int = Field(3, ge=1, description="top-k accuracy (capped at classes - 1)")
    tta: bool = Field(False, description="average the predictions of the image and its mirror")
    calibration_bins: int = Field(10, ge=2, le=100, description="ECE and reliability bins")
    gallery: int = Field(16, ge=0, le=200, description="highest-loss test images shown")


class CrossvalParams(_Params):
    """k-fold cross-validation on the split's folds, fold ensembles and the label-issue report."""

    epochs: int | None = Field(None, ge=1, description="epochs per fold; null = train.yaml's")
    ensemble_k: int | None = Field(
        None, ge=1, description="fold models averaged on the test split; null = all folds"
    )
    label_issues: int = Field(
        50, ge=0, description="most suspicious training images listed (confident learning)"
    )


STAGE_MODELS: dict[str, type[_Params]] = {
    "clean": CleanParams,
    "split": SplitParams,
    "augment": AugmentParams,
    "tune": TuneParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "crossval": CrossvalParams,
}


P = TypeVar("P", bound=_Params)


class ParamsError(ValueError):
    """A params file is missing, unreadable or invalid; the message is one line per problem."""


def load_params(model: type[P], path: Path) -> P:
    """Read and validate one params YAML, raising ParamsError naming file, key and reason."""
    if not path.is_file():
        raise ParamsError(f"{path}: file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of key: value, got {type(raw).__name__}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(top level)"
            got = f" (got {err['input']!r})" if err["type"] != "missing" and err["loc"] else ""
            lines.append(f"{path}: {key}: {err['msg']}{got}")
        raise ParamsError("\n".join(lines)) from None
