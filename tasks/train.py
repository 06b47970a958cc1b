"""The fine-tuning loop shared by the train, tune and crossval stages.

Recipe (all from params/train.yaml): the new head trains alone for
`freeze_epochs`, then backbone stages unfreeze from the top (all at once or
`unfreeze_stages` per epoch) at discriminative LRs; AdamW or SGD+Nesterov,
warmup + cosine or one-cycle per step, no weight decay on norms/biases,
label smoothing, MixUp/CutMix, EMA of the weights, gradient clipping, the
augment stage's balance plan, early stopping on a chosen metric. Speed: AMP
(bf16, or fp16 + GradScaler), channels_last, pinned memory, torch.compile,
DDP under torchrun. Every epoch ends with an atomic checkpoint of the whole
state (model, optimizer, scheduler, scaler, EMA, RNGs, early stopping), from
which a killed run resumes on the exact same path.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from torch import nn

from params import CleanParams, TrainParams
from params.schema import execution_only
from tasks import distributed
from tasks.balance import BalancePlan
from tasks.checkpoint import CheckpointSaver, load_checkpoint, rng_state, set_rng_state
from tasks.dataset import (
    CachedImages,
    default_workers,
    make_loader,
    resolve_device_mode,
    split_cores,
)
from tasks.ema import make_ema
from tasks.inference import MODEL, autocast, load_model, model_payload, predict_logits
from tasks.label_task import SingleLabel, Validation, task_of
from tasks.model import Classifier, build_classifier, pick_device
from tasks.optim import make_optimizer, make_scheduler, param_groups, trainable_stages

CHECKPOINT = "checkpoint.pt"
# params that change speed, not results (marked in the schema): a checkpoint is resumed
# across them, and DVC does not track them
SPEED_ONLY = set(execution_only(TrainParams))

__all__ = [  # load_model, predict_logits and MODEL live in tasks.inference
    "CHECKPOINT",
    "MODEL",
    "EpochMetrics",
    "FitResult",
    "TrainData",
    "TrainState",
    "fit",
    "load_checkpoint",
    "load_model",
    "param_groups",
    "predict_logits",
    "run_fingerprint",
]


@dataclass
class TrainData:
    split: pd.DataFrame
    clean_dir: Path
    train_pipeline: A.Compose
    eval_pipeline: A.Compose
    image_size: int
    balance: BalancePlan = field(default_factory=BalancePlan)
    clean: CleanParams = field(default_factory=CleanParams)
    augment_device: str = "auto"  # augment.yaml `device`: where the v2-able transforms run

    @property
    def task(self) -> SingleLabel:
        """Single- or multi-label, as the split table holds (tasks/label_task.py)."""
        return task_of(self.split)

    @property
    def classes(self) -> list[str]:
        return self.task.classes(self.split)

    @property
    def class_labels(self) -> list[str]:
        """Each class as its user named it ('Food & Drink' for the folder food_drink), so
        predictions speak the user's labels, or the folder name where collect recorded none."""
        return self.task.class_labels(self.split, self.classes)

    def part(self, name: str) -> pd.DataFrame:
        return self.split[self.split["split"] == name]

    def with_val_in_train(self) -> TrainData:
        """The split with every val image moved to train (a refit): nothing is validated."""
        moved = self.split["split"].mask(self.split["split"] == "val", "train")
        return replace(self, split=self.split.assign(split=moved))

    def fingerprint(self) -> str:
        """Identifies the exact split and balance plan: a checkpoint resumes only on the same."""
        columns = ["sha256", self.task.column, "split"]
        key = self.split[columns].astype(str).to_csv(index=False)
        key += json.dumps(self.balance.to_dict(), sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class EpochMetrics:
    epoch: int
    frozen: bool  # the whole backbone was frozen (head only)
    trainable_stages: int
    lr: float  # the head's LR at the end of the epoch
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    # speed: share of the epoch's training time spent blocked on the loader, and images/s
    data_wait: float = 0.0
    images_per_s: float = 0.0
    seconds: float = 0.0  # the training pass (validation not included)
    val_map: float | None = None  # multi-label: macro mean average precision on val

    def record(self) -> dict:
        """As a dict, without the multi-label fields a single-label run leaves empty."""
        return {k: v for k, v in asdict(self).items() if not (k == "val_map" and v is None)}


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = math.inf
    best_loss: float = math.inf  # breaks ties of an accuracy monitor
    monitor: str = "val_loss"
    stopped_early: bool = False
    resumed_from: int | None = None

    @property
    def best(self) -> EpochMetrics | None:
        return next((m for m in self.history if m.epoch == self.best_epoch), None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The data order and augmentations of an epoch depend on (seed, epoch) only: resumable."""
    return (seed * 1_000_003 + epoch) % 2**31


def amp_dtype(params: TrainParams, device: torch.device) -> torch.dtype | None:
    """auto: bf16 on CUDA where supported, else fp16 (with a GradScaler); off on CPU/MPS."""
    if params.amp == "off":
        return None
    if params.amp == "bf16":
        return torch.bfloat16
    if params.amp == "fp16":
        return torch.float16
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def uses_channels_last(params: TrainParams, device: torch.device) -> bool:
    return params.channels_last == "on" or (
        params.channels_last == "auto" and device.type == "cuda"
    )


def resolved(params: TrainParams, data: TrainData) -> TrainParams:
    """train.yaml as the data's kind trains with it: multi-label data's `multi_label:`
    values, and the `auto` values `monitor` (val_accuracy, or val_map) and
    `label_smoothing` (0.1, or 0)."""
    task = data.task
    params = task.recipe(params)
    return params.model_copy(
        update={
            "monitor": task.resolve(params.monitor),
            "label_smoothing": task.smoothing(params.label_smoothing),
        }
    )


def run_fingerprint(params: TrainParams, data: TrainData) -> str:
    """Same params and same data → same run; only then is a checkpoint resumed."""
    params = resolved(params, data)
    key = params.model_dump_json(exclude=SPEED_ONLY) + data.fingerprint()
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _mixer(params: TrainParams, num_classes: int) -> Callable | None:
    """torchvision.transforms.v2 MixUp / CutMix (one of them per batch when both are on)."""
    from torchvision.transforms import v2

    steps = []
    if params.mixup_alpha > 0:
        steps.append(v2.MixUp(alpha=params.mixup_alpha, num_classes=num_classes))
    if params.cutmix_alpha > 0:
        steps.append(v2.CutMix(alpha=params.cutmix_alpha, num_classes=num_classes))
    if not steps:
        return None
    return steps[0] if len(steps) == 1 else v2.RandomChoice(steps)


class _Wrapped:
    """The module the training step calls: the net, under DDP and torch.compile when asked.

    DDP registers only parameters that require grad when it is built, so it is
    rebuilt whenever unfreezing changes the trainable set.
    """

    def __init__(self, net: nn.Module, params: TrainParams, ranks, device: torch.device) -> None:
        self.net, self.params, self.ranks, self.device = net, params, ranks, device
        self.key: int | None = None
        self.module: nn.Module = net

    def for_stages(self, n_trainable: int) -> nn.Module:
        if n_trainable != self.key:
            self.key = n_trainable
            module: nn.Module = self.net
            if self.ranks.distributed:
                from torch.nn.parallel import DistributedDataParallel

                ids = [self.device.index] if self.device.type == "cuda" else None
                module = DistributedDataParallel(self.net, device_ids=ids)
            if self.params.compile:
                module = torch.compile(module)  # type: ignore[assignment]
            self.module = module
        return self.module


@dataclass
class Steps:
    """What one optimisation step uses; fit builds it once, benchmarks build the same."""

    net: nn.Module
    params: TrainParams
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module
    dtype: torch.dtype | None = None
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = None
    ema: nn.Module | None = None
    mixer: Callable | None = None
    task: SingleLabel = field(default_factory=SingleLabel)


def make_steps(
    clf: Classifier,
    params: TrainParams,
    device: torch.device,
    steps_per_epoch: int,
    class_weight: torch.Tensor | None = None,
    task: SingleLabel | None = None,
) -> Steps:
    """Optimizer, schedule, loss, AMP scaler, EMA and MixUp/CutMix as train.yaml asks."""
    task = task or SingleLabel()
    dtype = amp_dtype(params, device)
    optimizer = make_optimizer(param_groups(clf, params), params)
    return Steps(
        net=clf.net,
        params=params,
        device=device,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, params, steps_per_epoch),
        criterion=task.loss(
            task.smoothing(params.label_smoothing),
            class_weight.to(device) if class_weight is not None else None,
        ),
        dtype=dtype,
        channels_last=uses_channels_last(params, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        ema=make_ema(clf.net, params.ema_decay) if params.ema_decay > 0 else None,
        mixer=_mixer(params, clf.head.out_features),
        task=task,
    )


@dataclass
class EpochTotals:
    loss: float  # summed over images
    correct: int
    seen: int
    seconds: float
    data_wait: float  # seconds blocked waiting for the loader's next batch
    judged: int = 0  # decisions behind `correct`: images, or (image, label) pairs


def train_epoch(
    steps: Steps,
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    after_step: Callable[[int], None] | None = None,
) -> EpochTotals:
    """One pass over `batches`. Loss and accuracy stay on the device until the epoch ends:
    a per-step `.item()` would make the CPU wait for the GPU at every step."""
    p, device, scaler = steps.params, steps.device, steps.scaler
    assert scaler is not None
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen, judged, wait = 0, 0, 0.0
    started = time.perf_counter()
    iterator = iter(batches)
    step = 0
    while True:
        asked = time.perf_counter()
        batch = next(iterator, None)
        wait += time.perf_counter() - asked
        if batch is None:
            break
        images, labels = batch
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if steps.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets: torch.Tensor = labels
        if steps.mixer is not None and torch.rand(()) < p.mix_prob:
            images, targets = steps.mixer(images, labels)
        with autocast(device, steps.dtype):
            logits = model(images)
            loss = steps.criterion(logits.float(), targets)
        steps.optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if p.grad_clip > 0:
            scaler.unscale_(steps.optimizer)
            nn.utils.clip_grad_norm_(
                [q for q in steps.net.parameters() if q.requires_grad], p.grad_clip
            )
        scaler.step(steps.optimizer)
        scaler.update()
        steps.scheduler.step()
        if steps.ema is not None:
            steps.ema.update_parameters(steps.net)
        loss_sum += loss.detach() * len(labels)
        right, decisions = steps.task.correct(logits.detach(), labels)
        correct += right
        judged += decisions
        seen += len(labels)
        if after_step:
            after_step(step)
        step += 1
    loss_value, correct_value = loss_sum.item(), int(correct.item())  # waits for the device
    return EpochTotals(loss_value, correct_value, seen, time.perf_counter() - started, wait, judged)


@dataclass
class TrainState:
    """Everything a resumed run continues from, saved and loaded like a torch module."""

    steps: Steps
    history: list[EpochMetrics] = field(default_factory=list)
    epoch: int = -1  # the last finished epoch

    def state_dict(self) -> dict:
        s = self.steps
        assert s.scaler is not None
        return {
            "epoch": self.epoch,
            "model": s.net.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(),
            "ema": s.ema.state_dict() if s.ema is not None else None,
            "rng": rng_state(),
            "history": json.dumps([m.record() for m in self.history]),
        }

    def load_state_dict(self, state: dict) -> None:
        s = self.steps
        assert s.scaler is not None
        s.net.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.scheduler.load_state_dict(state["scheduler"])
        s.scaler.load_state_dict(state["scaler"])
        if s.ema is not None and state.get("ema") is not None:
            s.ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        self.history = [EpochMetrics(**m) for m in json.loads(state["history"])]
        self.epoch = state["epoch"]


@dataclass
class Run:
    """What fit builds once: device and ranks, the network, the loaders, the step's parts."""

    clf: Classifier
    ranks: distributed.Ranks
    train_set: CachedImages
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    sampler: object
    generator: torch.Generator
    steps: Steps
    wrapped: _Wrapped
    threads: int  # torch's intra-op threads before the run split the cores with its workers
    validation: Validation | None = None  # the last validation (None: no val images)

    @property
    def evaluated(self) -> nn.Module:
        """The weights that are validated and kept: the EMA when there is one."""
        return self.steps.ema.module if self.steps.ema is not None else self.steps.net


def build_run(
    params: TrainParams,
    data: TrainData,
    train_rows: pd.DataFrame | None = None,
    val_rows: pd.DataFrame | None = None,
) -> Run:
    """Device (and DDP rank), classifier, seeded loaders and the optimisation step."""
    device = pick_device(params.device)
    ranks = distributed.init(device)
    if ranks.distributed and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    classes = data.classes
    clf = build_classifier(params.model, params.weights, len(classes), params.dropout)
    task = data.task
    train_rows = data.part("train") if train_rows is None else train_rows
    if params.prior_bias:
        clf.set_head_bias(task.prior_bias(task.targets(train_rows, classes), len(classes)))
    clf.net.to(device)
    if uses_channels_last(params, device):
        clf.net.to(memory_format=torch.channels_last)
    workers = default_workers(device) if params.num_workers == "auto" else params.num_workers
    val_rows = data.part("val") if val_rows is None else val_rows
    mode = resolve_device_mode(data.augment_device, device)
    train_set = CachedImages(
        train_rows, data.clean_dir, data.train_pipeline, classes, params.seed, mode, task
    )
    val_set = CachedImages(val_rows, data.clean_dir, data.eval_pipeline, classes, task=task)
    threads = torch.get_num_threads()
    if workers > 0:  # the loader's workers and this process's torch threads share the cores
        torch.set_num_threads(min(threads, split_cores(workers)))
    generator = torch.Generator()
    sampler = data.balance.sampler(train_set.targets, classes, generator, ranks.world_size, task)
    if sampler is None and ranks.distributed:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            train_set, ranks.world_size, ranks.rank, shuffle=True, seed=params.seed
        )
    train_loader = make_loader(
        train_set,
        params.batch_size,
        True,
        workers,
        params.seed,
        sampler=sampler,
        generator=generator,
        drop_last=len(train_set) > params.batch_size * ranks.world_size,
        device=device,
    )
    val_loader = make_loader(val_set, params.batch_size, False, workers, params.seed, device=device)
    steps = make_steps(
        clf, params, device, max(1, len(train_loader)), data.balance.loss_weight(classes), task
    )
    wrapped = _Wrapped(clf.net, params, ranks, device)
    return Run(
        clf, ranks, train_set, train_loader, val_loader, sampler, generator, steps, wrapped, threads
    )


@torch.no_grad()
def evaluate(
    net: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    dtype: torch.dtype | None = None,
    task: SingleLabel | None = None,
) -> Validation | None:
    """Loss, scores and per-image results on a validation loader; None when it is empty.

    The per-image results let the search compare two trials image by image (a paired
    test); for multi-label data the pass also picks each label's threshold."""
    if not len(loader.dataset):  # type: ignore[arg-type]
        return None
    logits, targets = predict_logits(net, loader, device, dtype)
    return (task or SingleLabel()).validate(logits, targets)


def run_epoch(
    run: Run,
    params: TrainParams,
    epoch: int,
    show_progress: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> EpochMetrics:
    """Train one epoch (the recipe's stages for it, seeded by (seed, epoch)), then validate."""
    steps, n_stages = run.steps, len(run.clf.stages)
    n_trainable = trainable_stages(params, epoch, n_stages)
    steps.net.train()
    run.clf.set_trainable_stages(n_trainable, params.batchnorm)
    model = run.wrapped.for_stages(n_trainable)
    run.generator.manual_seed(epoch_seed(params.seed, epoch) + run.ranks.rank)
    run.train_set.reseed(epoch_seed(params.seed, epoch) + run.ranks.rank)
    if hasattr(run.sampler, "set_epoch"):
        run.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
    label = f"epoch {epoch + 1}/{params.epochs}" + (
        " (head only)" if n_trainable == 0 else f" ({n_trainable}/{n_stages} stages)"
    )
    with Progress(transient=True, disable=not (show_progress and run.ranks.is_main)) as progress:
        bar = progress.add_task(label, total=len(run.train_loader))

        def after_step(step: int) -> None:
            progress.advance(bar)
            if on_step:
                on_step(epoch, step)

        totals = train_epoch(steps, model, run.train_loader, after_step)
    loss, correct, seen, judged = distributed.all_reduce_sum(
        [totals.loss, totals.correct, totals.seen, totals.judged], steps.device
    )
    run.validation = evaluate(
        run.evaluated,
        run.val_loader,
        steps.device,
        steps.dtype,
        steps.task,
    )
    scores = run.validation.scores if run.validation else {}
    return EpochMetrics(
        epoch=epoch,
        frozen=n_trainable == 0,
        trainable_stages=n_trainable,
        lr=steps.optimizer.param_groups[0]["lr"],
        train_loss=loss / max(seen, 1),
        train_accuracy=correct / max(judged, 1),
        val_loss=run.validation.loss if run.validation else None,
        val_accuracy=scores.get("val_accuracy"),
        data_wait=totals.data_wait / max(totals.seconds, 1e-9),
        images_per_s=totals.seen / max(totals.seconds, 1e-9),
        seconds=totals.seconds,
        val_map=scores.get("val_map"),
    )


def monitored(metrics: EpochMetrics, monitor: str) -> tuple[float, float]:
    """(score, tie-breaking loss); without validation images, the training metric (the
    training accuracy stands in for a validation metric training does not compute)."""
    score = getattr(metrics, monitor)
    if score is None:
        score = getattr(metrics, monitor.replace("val_", "train_"), metrics.train_accuracy)
    loss = metrics.val_loss if metrics.val_loss is not None else metrics.train_loss
    return score, loss


def fit(
    params: TrainParams,
    data: TrainData,
    out_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    show_progress: bool = True,
    *,
    on_step: Callable[[int, int], None] | None = None,
    val_part: pd.DataFrame | None = None,
    train_part: pd.DataFrame | None = None,
    on_validation: Callable[[int, np.ndarray], None] | None = None,
) -> FitResult:
    """Train; with `out_dir`, checkpoint every epoch, resume, and keep the best model.

    `train_part`/`val_part` override the split's train/val rows (cross-validation folds).
    `on_step(epoch, step)` is called after every optimizer step, `on_validation(epoch,
    per_image)` before `on_epoch` with each validation image's result (val rows in split
    order): a hit, or for multi-label data its label ranking precision.
    """
    params = resolved(params, data)
    seed_everything(params.seed)
    run = build_run(params, data, train_part, val_part)
    state = TrainState(run.steps)
    saver = CheckpointSaver(
        params.monitor,
        params.min_delta,
        params.patience,
        checkpoint=out_dir / CHECKPOINT if out_dir else None,
        model=out_dir / MODEL if out_dir else None,
        fingerprint=run_fingerprint(params, data),
        writes=run.ranks.is_main,
    )
    result = FitResult(monitor=params.monitor)
    if (saved := saver.resume()) is not None:
        state.load_state_dict(saved)
        result.resumed_from = state.epoch + 1

    for epoch in range(state.epoch + 1, params.epochs):
        metrics = run_epoch(run, params, epoch, show_progress, on_step)
        state.history.append(metrics)
        state.epoch = epoch
        improved = saver.update(*monitored(metrics, params.monitor), epoch)
        finished = saver.stop or epoch + 1 == params.epochs
        saver.save(
            improved,
            model=lambda e=epoch: (
                model_payload(run.evaluated.state_dict(), run.clf, params, data)
                | (run.validation.decision if run.validation else {})
                | {"epoch": e}
            ),
            state=lambda f=finished: state.state_dict() | {"finished": f},
        )
        distributed.barrier()
        if on_validation and run.ranks.is_main and run.validation is not None:
            on_validation(epoch, run.validation.per_image)
        if on_epoch and run.ranks.is_main:
            on_epoch(metrics)
        if saver.stop:
            result.stopped_early = True
            break
    torch.set_num_threads(run.threads)
    result.history = state.history
    result.best_epoch, result.best_score = saver.best_epoch, saver.best_score
    result.best_loss = saver.best_loss
    return result
