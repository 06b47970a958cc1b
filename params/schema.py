"""Pydantic models for every stage's YAML.

They are the single source of truth for parameter names, defaults and limits:
the CLI validates with them before any work starts, and the Prefect flows take
them as parameters so the UI renders typed forms.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

# how training evens out class sizes; tasks/balance.py implements each
BalanceStrategy = Literal["none", "weighted_sampler", "class_weights", "oversample"]


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


# A field that changes only where or how fast a stage runs, never its results: DVC does not
# track it (flows/stages.py leaves it out of the stage's `params:` in dvc.yaml), so changing
# it makes no stage stale and retrains nothing.
EXECUTION_ONLY = {"execution_only": True}


def execution_only(model: type[BaseModel]) -> frozenset[str]:
    """The fields of `model` marked EXECUTION_ONLY."""
    return frozenset(
        name
        for name, info in model.model_fields.items()
        if isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("execution_only")
    )


def tracked_keys(model: type[BaseModel]) -> list[str]:
    """The fields of `model` that can change a stage's results, in declaration order."""
    skip = execution_only(model)
    return [name for name in model.model_fields if name not in skip]


SECRET_ERROR = "secret_in_params"  # an error whose input is never echoed back


def refuse_password(url: str | None) -> str | None:
    """A URL with a password written in it is refused: DVC copies the params file into the
    committed dvc.lock. A `${VAR}` reference (expanded when the value is used) is fine."""
    if not url:
        return url
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password and re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", password):
        raise PydanticCustomError(
            SECRET_ERROR,
            "a password written in the URL would be committed (dvc.lock copies this file): "
            "remove it and set PGPASSWORD or ~/.pgpass, or write ${VAR} "
            "(e.g. postgresql://user:${PGPASSWORD}@host/db, expanded at run time)",
        )
    return url


class CleanParams(_Params):
    """Decode, orient, convert and resize every raw image into the cache; reject the unusable."""

    max_side: int = Field(128, ge=16, le=4096, description="longest side of cached images (px)")
    min_side: int = Field(8, ge=1, description="images with a shorter side are rejected")
    max_aspect_ratio: float = Field(
        10.0, ge=1, description="longest / shortest side above this is rejected (aspect_ratio)"
    )
    background: tuple[int, int, int] = Field(
        (255, 255, 255), description="RGB colour that transparent pixels are composited on"
    )
    max_pixels: int = Field(
        89_478_485, ge=1, description="decompression-bomb limit (Pillow's default)"
    )
    near_duplicates: Literal["group", "keep_one", "off"] = Field(
        "group",
        description="group: keep all, split keeps each group together; "
        "keep_one: keep the first path of each group, reject the rest",
    )
    phash_threshold: int = Field(
        4, ge=0, le=32, description="near-duplicates differ in at most this many pHash bits"
    )
    classes: list[str] | None = Field(
        None, description="allowed labels (folder names or original labels); others rejected"
    )
    imbalance_ratio: float = Field(
        3.0, ge=1, description="warn when the largest class has this many times the smallest"
    )


class SplitParams(_Params):
    """Stable, stratified train/val/test assignment, optionally with k folds over train+val."""

    train: float = Field(0.7, gt=0, lt=1)
    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    seed: int = 0
    group_by: str | None = Field(
        None, description="a manifest column (e.g. from a collect manifest) kept in one split"
    )
    folds: int = Field(0, ge=0, le=100, description="k-fold assignment over train+val (0: none)")
    folder_split: bool = Field(
        True,
        description="a tree collected already split (root/train|val|test/<label>/…): images "
        "of its val/ and test/ folders stay in that split, the rest is drawn over the others",
    )

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must be 1.0, got {total:g}")
        return self

    @field_validator("folds")
    @classmethod
    def _no_single_fold(cls, folds: int) -> int:
        if folds == 1:
            raise ValueError("folds must be 0 (no cross-validation) or at least 2")
        return folds


class KindRecipe(_Params):
    """A stage's params with a `multi_label:` block: its keys' values for multi-label data
    (tasks/label_task.py applies it once the data's kind is known)."""

    NOT_PER_KIND: ClassVar[frozenset[str]] = frozenset()  # keys other stages read as written

    multi_label: dict[str, Any] = Field(
        default_factory=dict,
        description="keys of this file that multi-label data uses instead of the values above; "
        "a value a search chose still wins",
    )

    @field_validator("multi_label")
    @classmethod
    def _known_keys(cls, block: dict[str, Any]) -> dict[str, Any]:
        unknown = set(block) - set(cls.model_fields) | (set(block) & {"multi_label"})
        fixed = set(block) & cls.NOT_PER_KIND
        if unknown or fixed:
            what = "not keys of this file" if unknown else "the same for every kind"
            raise ValueError(f"multi_label: {', '.join(sorted(unknown or fixed))}: {what}")
        return block

    @model_validator(mode="after")
    def _block_values_valid(self) -> Self:
        if self.multi_label:  # its values checked as the file's own are
            try:
                self.multi_label_recipe()
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(map(str, problem["loc"]))
                raise ValueError(f"multi_label.{where}: {problem['msg']}") from None
        return self

    def overlay(self, values: dict[str, Any]) -> dict[str, Any]:
        """This file's values with `values` set (a search's, a command line's), and those keys
        taken out of the multi-label block, so that they hold on multi-label data too."""
        block = {k: v for k, v in self.multi_label.items() if k not in values}
        return {**self.model_dump(), **values, "multi_label": block}

    def with_values(self, values: dict[str, Any]) -> Self:
        return self.model_validate(self.overlay(values))

    def multi_label_recipe(self) -> Self:
        """The values multi-label data uses: the block applied, then emptied (applying it
        twice changes nothing)."""
        return self.model_validate({**self.model_dump(), **self.multi_label, "multi_label": {}})


class AugmentParams(KindRecipe):
    """Albumentations pipelines and the class-balance plan.

    Train: RandomResizedCrop to `image_size`, then the preset's transforms (or
    `custom` ones), then the model's normalisation. `mean`/`std` 'auto' follow
    the model in train.yaml. Whether each `custom` transform exists and takes
    its arguments is albumentations' to say: tasks/transforms.py checks it
    (Project.params and the pipeline builder call it), so params imports no tasks code.
    """

    image_size: int = Field(96, ge=16, le=1024, description="side of the square model input")
    scale_min: float = Field(0.9, gt=0, le=1, description="RandomResizedCrop's smallest area")
    preset: Literal["light", "strong", "trivialaugment", "randaugment", "custom"] = Field(
        "light",
        description="light | strong | trivialaugment (TrivialAugmentWide) | randaugment "
        "(RandAugment m9) | custom (the `custom` list)",
    )
    custom: list[dict[str, dict[str, Any] | None]] = Field(
        default_factory=list,
        description="albumentations transforms by name: [{Name: {argument: value}}, …]",
    )
    mean: tuple[float, float, float] | Literal["auto"] = "auto"
    std: tuple[float, float, float] | Literal["auto"] = "auto"
    preview_per_class: int = Field(4, ge=1, le=32)
    balance: BalanceStrategy = Field(
        "none", description="how training evens out class sizes (artifacts/augment/balance.json)"
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        "auto",
        description="where the train transforms with a torchvision v2 equivalent run: "
        "cpu (loader workers), gpu (per batch on the training device), auto (gpu on CUDA)",
    )
    seed: int = 0

    # the train and evaluate stages read these from augment.yaml as written
    NOT_PER_KIND: ClassVar[frozenset[str]] = frozenset({"image_size", "device", "mean", "std"})

    @model_validator(mode="after")
    def _custom_needs_its_preset(self) -> AugmentParams:
        if self.preset == "custom" and not self.custom:
            raise ValueError("preset: custom needs a non-empty `custom` list of transforms")
        if self.preset != "custom" and self.custom:
            raise ValueError(
                f"`custom` transforms are ignored by preset {self.preset!r}: "
                "set preset: custom, or remove them"
            )
        return self


def check_model_name(model: str) -> None:
    """ValueError for a timm name timm does not know (or a tag it lacks) or a malformed hf-hub id.

    Offline and cheap (timm's registry; timm is imported only for such names).
    Lives here, not in tasks/model.py, so validating params imports no model code;
    torchvision names and whether a Hub repo exists are checked when the model is built.
    """
    if model.startswith("hf-hub:"):
        org, _, repo = model.removeprefix("hf-hub:").partition("/")
        if not org or not repo or "/" in repo:
            raise ValueError(
                f"{model}: write hf-hub:<org>/<repo>, e.g. hf-hub:timm/resnet18.a1_in1k"
            )
        return
    if not model.startswith("timm/"):
        return
    import difflib

    import timm

    name = model.removeprefix("timm/")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name.partition(".")[0], timm.list_models(), n=3)
        hint = f" (did you mean {', '.join('timm/' + c for c in close)}?)" if close else ""
        raise ValueError(f"unknown timm model {model!r}{hint}; `visiontune models` lists some")
    arch, _, tag = name.partition(".")
    pretrained = timm.list_pretrained(f"{arch}.*")
    if tag and f"{arch}.{tag}" not in pretrained:
        tags = ", ".join(t.partition(".")[2] for t in pretrained)
        raise ValueError(f"{model}: timm has no weights tagged {tag!r} for {arch} (it has: {tags})")


HEAD_SHARE = 0.2  # freeze_epochs: auto: the recipe benchmark's best share at 5-10 epochs


class TrainParams(KindRecipe):
    """Fine-tuning recipe: head first, then backbone stages unfrozen from the top at lower LRs."""

    # model
    model: str = Field(
        "efficientnet_lite0",
        description="efficientnet_lite0|1|2 (offline weights), timm/<name>, hf-hub:<org>/<repo> "
        "or a torchvision model name",
    )
    weights: str = Field(
        "default",
        description="'default' (pretrained), 'none' (random init) or a path to a weights file "
        "(.safetensors or .pt)",
    )
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout before the new head")
    # schedule of what trains
    epochs: int = Field(6, ge=1, le=1000)
    freeze_epochs: int | Literal["auto"] = Field(
        "auto",
        description="head-only epochs with the backbone frozen; auto = a fifth of the epochs "
        "(at least 1)",
    )
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
    label_smoothing: Annotated[float, Field(ge=0, lt=1)] | Literal["auto"] = Field(
        "auto",
        description="targets pulled towards uniform (multi-label: towards ½); auto = 0.1, or "
        "0 for multi-label data, where it measured worse",
    )
    mixup_alpha: float = Field(0.0, ge=0, description="MixUp Beta(α, α); 0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="CutMix Beta(α, α); 0 = off")
    mix_prob: float = Field(1.0, ge=0, le=1, description="share of batches mixed when on")
    ema_decay: float = Field(
        0.0, ge=0, lt=1, description="EMA of the weights (validated and saved); 0 = off"
    )
    grad_clip: float = Field(0.0, ge=0, description="max gradient norm; 0 = off")
    prior_bias: bool = Field(
        False,
        description="the new head's bias starts at the classes' log prior on train (multi-label: "
        "each label's log-odds), so the first steps are not spent learning base rates",
    )
    # early stopping and the kept model
    monitor: Literal["auto", "val_loss", "val_accuracy", "val_map"] = Field(
        "auto",
        description="picks the kept epoch (a tie goes to the lower val loss) and drives early "
        "stopping; auto = val_accuracy, or val_map (macro mean average precision) for "
        "multi-label data",
    )
    patience: int = Field(3, ge=1, description="epochs without improvement before stopping")
    refit: Literal["auto", "on", "off"] = Field(
        "auto",
        description="on: the val images join the train split, every epoch runs and the "
        "kept one is picked by the training metric; auto: on after a search, whose trials "
        "already used the val images to judge the recipe",
    )
    min_delta: float = Field(0.0, ge=0, description="smallest change that counts as better")
    # data loading and speed
    batch_size: int = Field(32, ge=1, le=4096)
    num_workers: int | Literal["auto"] = Field(
        "auto",
        description="DataLoader workers; auto = 0 on CPU, min(8, cores - 1) on CUDA",
        json_schema_extra=EXECUTION_ONLY,
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on CUDA (fp16 + GradScaler without bf16), off elsewhere"
    )
    channels_last: Literal["auto", "on", "off"] = Field("auto", description="auto: on with CUDA")
    compile: bool = Field(
        False, description="torch.compile the model", json_schema_extra=EXECUTION_ONLY
    )
    seed: int = 0

    NOT_PER_KIND: ClassVar[frozenset[str]] = frozenset({"model"})  # the augment stage reads it

    @field_validator("model")
    @classmethod
    def _known_model(cls, model: str) -> str:
        check_model_name(model)
        return model

    @property
    def head_epochs(self) -> int:
        """freeze_epochs resolved: `auto` is a share of the budget (LP-FT style), so a short
        run and a long one both spend a fifth of it on the head alone."""
        if self.freeze_epochs == "auto":
            return max(1, round(HEAD_SHARE * self.epochs))
        return self.freeze_epochs

    @model_validator(mode="after")
    def _freeze_within_epochs(self) -> TrainParams:
        if isinstance(self.freeze_epochs, int) and self.freeze_epochs < 0:
            raise ValueError("freeze_epochs must be ≥ 0 or auto")
        if self.head_epochs > self.epochs:
            raise ValueError(
                f"freeze_epochs ({self.freeze_epochs}) cannot exceed epochs ({self.epochs})"
            )
        return self


class FloatDim(_Params):
    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatDim:
        if self.low > self.high:
            raise ValueError(f"low ({self.low:g}) must not exceed high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self

    def values(self) -> list:
        return [self.low, self.high]


class IntDim(_Params):
    type: Literal["int"] = "int"
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntDim:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")
        return self

    def values(self) -> list:
        return [self.low, self.high]


class CategoricalDim(_Params):
    type: Literal["categorical"] = "categorical"
    choices: list[str | int | float | bool] = Field(min_length=1)

    def values(self) -> list:
        return list(self.choices)


SearchDim = Annotated[FloatDim | IntDim | CategoricalDim, Field(discriminator="type")]


def _default_space() -> dict[str, FloatDim | IntDim | CategoricalDim]:
    return {
        "lr": FloatDim(low=1e-3, high=1e-2, log=True),
        "weight_decay": FloatDim(low=1e-6, high=1e-2, log=True),
        "freeze_epochs": IntDim(low=0, high=1),
    }


class TuneParams(_Params):
    """Optuna search over train.yaml keys; `n_trials: 0` passes train.yaml through."""

    n_trials: int = Field(0, ge=0, description="trials to finish (complete or pruned)")
    n_jobs: int = Field(
        1, ge=1, description="trials running at once", json_schema_extra=EXECUTION_ONLY
    )
    parallel: Literal["thread", "process", "dask"] = Field(
        "thread",
        description="how `n_jobs` trials run at once: threads, processes or Dask",
        json_schema_extra=EXECUTION_ONLY,
    )
    dask_address: str | None = Field(
        None,
        description="parallel: dask: the scheduler (tcp://host:8786); "
        "null = a LocalCluster of n_jobs one-thread workers",
        json_schema_extra=EXECUTION_ONLY,
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads per trial; null = cores // n_jobs",
        json_schema_extra=EXECUTION_ONLY,
    )
    epochs: int | None = Field(
        None,
        ge=1,
        description="epochs per trial; null = train.yaml's epochs, so the trial of train.yaml's "
        "own values (trial 0) is the training it would get, and no shorter proxy misleads",
    )
    timeout: float | None = Field(None, gt=0, description="seconds for the whole search")
    metric: Literal["auto", "val_accuracy", "val_loss", "val_map"] = Field(
        "auto",
        description="what trials are ranked by; auto = val_accuracy, or val_map for "
        "multi-label data (losses are minimised, the others maximised)",
    )
    storage: str | None = Field(
        None,
        description="Optuna RDB URL (sqlite:///…, postgresql://user@host/db) or journal:PATH; "
        "no password in it (PGPASSWORD, ~/.pgpass or ${VAR}, expanded at run time); "
        "default: SQLite under artifacts/tune/study/",
        json_schema_extra=EXECUTION_ONLY,
    )
    seed: int = 0

    sampler: Literal["auto", "qmc", "tpe"] = Field(
        "auto", description="auto: qmc up to 10 trials, tpe beyond"
    )
    min_gain: float = Field(
        0.0,
        ge=0,
        description="the best trial replaces train.yaml's values (trial 0) only if it beats "
        "them by this much (metric units)",
    )
    confidence: float = Field(
        0.9,
        ge=0,
        lt=1,
        description="…and only if a paired sign test over the validation images (those one "
        "trial gets right and the other wrong) puts it ahead with this confidence; 0 = off",
    )
    pruner: Literal["median", "hyperband", "none"] = "median"
    pruner_warmup_epochs: int = Field(1, ge=0, description="epochs before a trial can be pruned")
    heartbeat_interval: int = Field(
        10, ge=1, description="seconds between trial heartbeats", json_schema_extra=EXECUTION_ONLY
    )
    grace_period: int = Field(
        30,
        ge=2,
        description="a RUNNING trial silent this long is failed",
        json_schema_extra=EXECUTION_ONLY,
    )
    max_retry: int = Field(1, ge=0, description="re-runs of a trial that failed or went stale")
    space: dict[str, SearchDim] = Field(default_factory=_default_space)

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # storage may hold one

    @field_validator("storage")
    @classmethod
    def _no_password(cls, storage: str | None) -> str | None:
        return refuse_password(storage)

    @model_validator(mode="after")
    def _space_fits_train_params(self) -> TuneParams:
        for key, dim in self.space.items():
            if key not in TrainParams.model_fields:
                raise ValueError(f"space.{key}: not a key of train.yaml")
            if key in ("epochs", "patience"):
                raise ValueError(
                    f"space.{key}: set by the tune stage (tune.epochs), not searchable"
                )
            for value in dim.values():
                try:
                    TrainParams.__pydantic_validator__.validate_assignment(
                        TrainParams.model_construct(), key, value
                    )
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"]
                    raise ValueError(
                        f"space.{key}: {value!r} is not a valid {key}: {reason}"
                    ) from None
        if self.grace_period <= self.heartbeat_interval:
            raise ValueError("grace_period must be longer than heartbeat_interval")
        return self


class EvaluateParams(_Params):
    """Test-split metrics, plots and the misclassified gallery."""

    batch_size: int = Field(
        64,
        ge=1,
        description="images per batch (eval mode: no effect on the metrics)",
        json_schema_extra=EXECUTION_ONLY,
    )
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


class RetrainParams(_Params):
    """Scheduled retraining: collect, retrain when data changed, promote only a better model."""

    # what to collect: any `visiontune collect` source, with that command's options
    source: Literal["demo", "folder", "manifest", "urls"] = Field(
        "demo", description="demo | folder | manifest | urls (then set path)"
    )
    path: str | None = Field(
        None,
        description="folder: the ImageFolder tree; manifest: the CSV/parquet file; "
        "urls: the 'URL [LABEL]' list (relative paths resolve against the project)",
    )
    per_class: int = Field(120, ge=1, description="demo: images per class")
    label: str = Field("", description="urls: the label for lines that carry none")
    timeout: float = Field(30.0, gt=0, description="seconds allowed for one download attempt")
    max_mb: float = Field(50.0, gt=0, description="largest file accepted, in MiB")
    retries: int = Field(3, ge=0, description="retries of a timed-out or 5xx download")
    backoff: float = Field(1.0, ge=0, description="seconds before the first retry (doubled)")
    workers: int = Field(8, ge=1, description="downloads in flight at once")
    allow_private: bool = Field(
        False,
        description="manifest/urls: also download from loopback, private and CGNAT hosts "
        "(your own image server); link-local (cloud metadata) and 0.0.0.0 stay refused",
    )
    mirror: bool = Field(
        False,
        description="data/ holds exactly the source: images it no longer has (deleted, or "
        "moved to another label) are removed, as `visiontune collect --mirror`",
    )
    label_sep: Literal[" ", "|", ";", ","] = Field(
        " ",
        description="manifest, multi-label: what separates the labels in a `labels` cell "
        "(' ' any whitespace, '|', ';' or ','), as `collect manifest --label-sep`",
    )
    label_columns: list[str] | None = Field(
        None,
        description="manifest, multi-label: one-hot columns, one label each (0/1, "
        "true/false, yes/no), as `collect manifest --label-columns`; null: a `label` or "
        "`labels` column",
    )
    allow_empty: bool = Field(
        False,
        description="manifest, multi-label: keep images with an empty label set instead of "
        "refusing them (no_label), as `collect manifest --allow-empty`",
    )
    # how to decide
    metric: str = Field(
        "auto",
        description="key of metrics.json that decides promotion; auto = accuracy, or "
        "map_macro for multi-label data",
    )
    higher_is_better: bool = True
    margin: float = Field(
        0.0, ge=0, description="promote only if the challenger beats the champion by more"
    )
    new_classes: Literal["promote", "compare_known", "reject"] = Field(
        "promote",
        description="when the test split has classes the champion does not know: promote "
        "the challenger, compare_known (decide on the images of the classes both know), "
        "or reject (keep the champion)",
    )
    removed_classes: Literal["promote", "compare"] = Field(
        "promote",
        description="when the champion knows classes the data no longer has: promote the "
        "challenger (the champion would go on predicting them), or compare (the margin rule)",
    )
    commit: bool = Field(False, description="git commit data.dvc, dvc.lock, registry; tag it")
    push: bool = Field(False, description="`dvc push` data and models to the DVC remote")

    @model_validator(mode="after")
    def _source_needs_path(self) -> RetrainParams:
        if self.source != "demo" and not self.path:
            what = {"folder": "ImageFolder tree", "manifest": "CSV or parquet manifest"}
            raise ValueError(
                f"source: {self.source} needs path: <{what.get(self.source, 'URL list file')}>"
            )
        return self


STAGE_MODELS: dict[str, type[_Params]] = {
    "clean": CleanParams,
    "split": SplitParams,
    "augment": AugmentParams,
    "tune": TuneParams,
    "train": TrainParams,
    "evaluate": EvaluateParams,
    "retrain": RetrainParams,
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
    return validated(model, raw, str(path))


def validated(model: type[P], raw: dict, where: str) -> P:
    """`raw` as a `model`, or ParamsError with one line per problem: where, key, reason."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            shown = err["type"] not in ("missing", SECRET_ERROR) and key  # never echo a secret
            got = f" (got {err['input']!r})" if shown else ""
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {key + ': ' if key else ''}{msg}{got}")
        raise ParamsError("\n".join(lines)) from None


def overrides_of(model: type[_Params]) -> type[_Params]:
    """`model` with every key optional, None meaning "keep the file's value": the typed
    fields (limits and descriptions included) of a deployment's form in the Prefect UI,
    where an untouched field changes nothing."""
    from pydantic import create_model

    def optional(info) -> Any:
        typed = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        return typed | None

    fields: dict[str, Any] = {
        name: (optional(info), Field(None, description=info.description))
        for name, info in model.model_fields.items()
    }
    return create_model(
        f"{model.__name__.removesuffix('Params')}Overrides", __base__=_Params, **fields
    )


TrainOverrides = overrides_of(TrainParams)
