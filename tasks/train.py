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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from torch import nn

from params import CleanParams, TrainParams
from tasks import distributed
from tasks.balance import BalancePlan
from tasks.checkpoint import load_checkpoint, load_torch, rng_state, save_torch, set_rng_state
from tasks.dataset import (
    CachedImages,
    default_workers,
    make_loader,
    resolve_device_mode,
    split_cores,
)
from tasks.ema import make_ema
from tasks.model import Classifier, build_classifier, pick_device
from tasks.optim import make_optimizer, make_scheduler, param_groups, trainable_stages

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"
MODEL_FORMAT = 2
# params that change speed, not results: a checkpoint is resumed across them
SPEED_ONLY = {"num_workers", "compile"}

__all__ = [
    "CHECKPOINT",
    "MODEL",
    "EpochMetrics",
    "FitResult",
    "TrainData",
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
    def classes(self) -> list[str]:
        return sorted(self.split["label"].unique())

    def part(self, name: str) -> pd.DataFrame:
        return self.split[self.split["split"] == name]

    def fingerprint(self) -> str:
        """Identifies the exact split and balance plan: a checkpoint resumes only on the same."""
        key = self.split[["sha256", "label", "split"]].astype(str).to_csv(index=False)
        key += json.dumps(asdict(self.balance), sort_keys=True)
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


def autocast(device: torch.device, dtype: torch.dtype | None = None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def uses_channels_last(params: TrainParams, device: torch.device) -> bool:
    return params.channels_last == "on" or (
        params.channels_last == "auto" and device.type == "cuda"
    )


@torch.no_grad()
def predict_logits(
    net: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    dtype: torch.dtype | None = None,
    tta: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for a whole loader, in loader order.

    With `tta`, the logits are log-mean-probabilities of the image and its mirror.
    """
    net.eval()
    outs, targets = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = net(images).float()
            if tta:
                mirrored = net(torch.flip(images, dims=[3])).float()
                probs = (logits.softmax(1) + mirrored.softmax(1)) / 2
                logits = probs.clamp_min(1e-12).log()
        outs.append(logits.cpu())
        targets.append(labels)
    if not outs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(targets)


def model_payload(state_dict: dict, clf: Classifier, params: TrainParams, data: TrainData) -> dict:
    """What prediction needs without the params: weights, classes, preprocessing."""
    return {
        "format": MODEL_FORMAT,
        "arch": params.model,
        "classes": data.classes,
        "image_size": data.image_size,
        "mean": list(clf.mean),
        "std": list(clf.std),
        "dropout": params.dropout,
        # the eval pipeline (A.to_dict) and the clean stage's decoding: raw image → tensor
        "eval_pipeline": json.dumps(A.to_dict(data.eval_pipeline)),
        "clean": data.clean.model_dump_json(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    }


def run_fingerprint(params: TrainParams, data: TrainData) -> str:
    """Same params and same data → same run; only then is a checkpoint resumed."""
    key = params.model_dump_json(exclude=SPEED_ONLY) + data.fingerprint()
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _better(
    value: float, best: float, monitor: str, min_delta: float, loss: float, best_loss: float
) -> bool:
    """Improved by more than min_delta; an accuracy tie is broken by the lower loss."""
    if not math.isfinite(best):
        return True
    if monitor.endswith("accuracy"):
        return value > best + min_delta or (min_delta == 0 and value == best and loss < best_loss)
    return value < best - min_delta


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


def make_steps(
    clf: Classifier,
    params: TrainParams,
    device: torch.device,
    steps_per_epoch: int,
    class_weight: torch.Tensor | None = None,
) -> Steps:
    """Optimizer, schedule, loss, AMP scaler, EMA and MixUp/CutMix as train.yaml asks."""
    dtype = amp_dtype(params, device)
    optimizer = make_optimizer(param_groups(clf, params), params)
    return Steps(
        net=clf.net,
        params=params,
        device=device,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, params, steps_per_epoch),
        criterion=nn.CrossEntropyLoss(
            weight=class_weight.to(device) if class_weight is not None else None,
            label_smoothing=params.label_smoothing,
        ),
        dtype=dtype,
        channels_last=uses_channels_last(params, device),
        scaler=torch.amp.GradScaler(device.type, enabled=dtype == torch.float16),
        ema=make_ema(clf.net, params.ema_decay) if params.ema_decay > 0 else None,
        mixer=_mixer(params, clf.head.out_features),
    )


@dataclass
class EpochTotals:
    loss: float  # summed over images
    correct: int
    seen: int
    seconds: float
    data_wait: float  # seconds blocked waiting for the loader's next batch


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
    seen, wait = 0, 0.0
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
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if after_step:
            after_step(step)
        step += 1
    loss_value, correct_value = loss_sum.item(), int(correct.item())  # waits for the device
    return EpochTotals(loss_value, correct_value, seen, time.perf_counter() - started, wait)


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
) -> FitResult:
    """Train; with `out_dir`, checkpoint every epoch, resume, and keep the best model.

    `train_part`/`val_part` override the split's train/val rows (cross-validation folds).
    `on_step(epoch, step)` is called after every optimizer step.
    """
    seed_everything(params.seed)
    device = pick_device(params.device)
    ranks = distributed.init(device)
    if ranks.distributed and device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
    main = ranks.is_main
    classes = data.classes
    clf = build_classifier(params.model, params.weights, len(classes), params.dropout)
    net = clf.net.to(device)
    channels_last = uses_channels_last(params, device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    dtype = amp_dtype(params, device)
    workers = default_workers(device) if params.num_workers == "auto" else params.num_workers

    train_rows = data.part("train") if train_part is None else train_part
    val_rows = data.part("val") if val_part is None else val_part
    mode = resolve_device_mode(data.augment_device, device)
    train_set = CachedImages(
        train_rows, data.clean_dir, data.train_pipeline, classes, params.seed, mode
    )
    val_set = CachedImages(val_rows, data.clean_dir, data.eval_pipeline, classes)
    threads = torch.get_num_threads()
    if workers > 0:  # the loader's workers and this process's torch threads share the cores
        torch.set_num_threads(min(threads, split_cores(workers)))
    generator = torch.Generator()
    sampler = data.balance.sampler(train_set.targets, classes, generator, ranks.world_size)
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
        clf, params, device, max(1, len(train_loader)), data.balance.loss_weight(classes)
    )
    optimizer, scheduler, scaler, ema = steps.optimizer, steps.scheduler, steps.scaler, steps.ema
    plain_criterion = nn.CrossEntropyLoss()
    wrapped = _Wrapped(net, params, ranks, device)
    n_stages = len(clf.stages)

    result = FitResult(monitor=params.monitor)
    start_epoch, bad_epochs = 0, 0
    fingerprint = run_fingerprint(params, data)
    ckpt_path = out_dir / CHECKPOINT if out_dir else None
    if ckpt_path:
        state = load_checkpoint(ckpt_path, fingerprint)
        if state is not None:
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            if ema is not None and state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            set_rng_state(state["rng"])
            result.history = [EpochMetrics(**m) for m in json.loads(state["history"])]
            result.best_epoch = state["best_epoch"]
            result.best_score = state["best_score"]
            result.best_loss = state["best_loss"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            result.resumed_from = start_epoch

    for epoch in range(start_epoch, params.epochs):
        n_trainable = trainable_stages(params, epoch, n_stages)
        net.train()
        clf.set_trainable_stages(n_trainable, params.batchnorm)
        model = wrapped.for_stages(n_trainable)
        generator.manual_seed(epoch_seed(params.seed, epoch) + ranks.rank)
        train_set.reseed(epoch_seed(params.seed, epoch) + ranks.rank)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # type: ignore[union-attr]
        frozen = n_trainable == 0
        label = f"epoch {epoch + 1}/{params.epochs}" + (
            " (head only)" if frozen else f" ({n_trainable}/{n_stages} stages)"
        )
        with Progress(transient=True, disable=not (show_progress and main)) as progress:
            bar = progress.add_task(label, total=len(train_loader))

            def after_step(step: int, _epoch: int = epoch, _bar=bar, _progress=progress) -> None:
                _progress.advance(_bar)
                if on_step:
                    on_step(_epoch, step)

            totals = train_epoch(steps, model, train_loader, after_step)
        total_loss, correct, seen = distributed.all_reduce_sum(
            [totals.loss, totals.correct, totals.seen], device
        )
        val_loss = val_acc = None
        evaluated = ema.module if ema is not None else net
        if len(val_set):
            logits, val_targets = predict_logits(evaluated, val_loader, device, dtype)
            val_loss = plain_criterion(logits, val_targets).item()
            val_acc = (logits.argmax(1) == val_targets).float().mean().item()
        metrics = EpochMetrics(
            epoch=epoch,
            frozen=frozen,
            trainable_stages=n_trainable,
            lr=optimizer.param_groups[0]["lr"],
            train_loss=total_loss / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
            data_wait=totals.data_wait / max(totals.seconds, 1e-9),
            images_per_s=totals.seen / max(totals.seconds, 1e-9),
            seconds=totals.seconds,
        )
        result.history.append(metrics)
        monitored = getattr(metrics, params.monitor)
        if monitored is None:  # no validation images: fall back to the training metric
            monitored = getattr(metrics, params.monitor.replace("val_", "train_"))
        tie_loss = metrics.val_loss if metrics.val_loss is not None else metrics.train_loss
        if _better(
            monitored,
            result.best_score,
            params.monitor,
            params.min_delta,
            tie_loss,
            result.best_loss,
        ):
            result.best_score, result.best_loss, result.best_epoch = monitored, tie_loss, epoch
            bad_epochs = 0
            if out_dir and main:
                payload = model_payload(evaluated.state_dict(), clf, params, data)
                save_torch(payload | {"epoch": epoch}, out_dir / MODEL)
        else:
            bad_epochs += 1
        stop = bad_epochs >= params.patience
        if ckpt_path and main:
            save_torch(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "rng": rng_state(),
                    "history": json.dumps([asdict(m) for m in result.history]),
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                    "best_loss": result.best_loss,
                    "bad_epochs": bad_epochs,
                    "finished": stop or epoch + 1 == params.epochs,
                },
                ckpt_path,
            )
        distributed.barrier()
        if on_epoch and main:
            on_epoch(metrics)
        if stop:
            result.stopped_early = True
            break
    torch.set_num_threads(threads)
    return result


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained network and its metadata from a model.pt (never unpickles objects)."""
    payload = load_torch(path, device)
    clf = build_classifier(payload["arch"], "none", len(payload["classes"]), payload["dropout"])
    clf.net.load_state_dict(payload["state_dict"])
    clf.net.to(device).eval()
    return clf.net, payload
