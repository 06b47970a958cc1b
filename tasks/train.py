"""The fine-tuning loop shared by the train and tune stages.

Recipe: a new head trained alone for `freeze_epochs` with the backbone frozen,
then the whole network with the backbone at `lr × backbone_lr_mult`; AdamW with
no weight decay on norms/biases, linear warmup then cosine decay per step,
label smoothing, early stopping on validation loss. Every epoch ends with an
atomic checkpoint, from which a killed run resumes.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from rich.progress import Progress
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR

from params import TrainParams
from tasks.dataset import CachedImages, make_loader
from tasks.files import atomic_path
from tasks.model import Classifier, build_classifier, pick_device

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"


@dataclass
class TrainData:
    split: pd.DataFrame
    clean_dir: Path
    train_pipeline: A.Compose
    eval_pipeline: A.Compose
    image_size: int

    @property
    def classes(self) -> list[str]:
        return sorted(self.split["label"].unique())

    def part(self, name: str) -> pd.DataFrame:
        return self.split[self.split["split"] == name]

    def fingerprint(self) -> str:
        """Identifies the exact split, so a checkpoint is only resumed on the same data."""
        key = self.split[["sha256", "label", "split"]].astype(str).to_csv(index=False)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass
class EpochMetrics:
    epoch: int
    frozen: bool
    lr: float
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None


@dataclass
class FitResult:
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = -1
    best_val_loss: float = math.inf
    stopped_early: bool = False
    resumed_from: int | None = None

    @property
    def best(self) -> EpochMetrics | None:
        return next((m for m in self.history if m.epoch == self.best_epoch), None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(clf: Classifier, params: TrainParams) -> list[dict]:
    """Head at `lr`, backbone at `lr × backbone_lr_mult`; no weight decay on 1-d tensors."""
    groups = []
    for name, tensors, lr in (
        ("head", clf.head_parameters(), params.lr),
        ("backbone", clf.backbone_parameters(), params.lr * params.backbone_lr_mult),
    ):
        decay = [p for p in tensors if p.ndim > 1]
        no_decay = [p for p in tensors if p.ndim <= 1]
        wd = params.weight_decay
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": wd})
        groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0})
    return [g for g in groups if g["params"]]


def make_scheduler(
    optimizer: torch.optim.Optimizer, params: TrainParams, steps_per_epoch: int
) -> LRScheduler:
    total = max(1, params.epochs * steps_per_epoch)
    warmup = min(total - 1, round(params.warmup_epochs * steps_per_epoch))
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total - warmup))
    if warmup <= 0:
        return cosine
    ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])


def autocast(device: torch.device):
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def predict_logits(
    net: nn.Module, loader: torch.utils.data.DataLoader, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for a whole loader, in loader order."""
    net.eval()
    outs, targets = [], []
    for images, labels in loader:
        with autocast(device):
            outs.append(net(images.to(device, non_blocking=True)).float().cpu())
        targets.append(labels)
    if not outs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(targets)


def model_payload(clf: Classifier, params: TrainParams, data: TrainData) -> dict:
    """What prediction needs without the params: weights, classes, preprocessing."""
    return {
        "arch": params.model,
        "classes": data.classes,
        "image_size": data.image_size,
        "mean": list(clf.mean),
        "std": list(clf.std),
        "dropout": params.dropout,
        "state_dict": {k: v.detach().cpu() for k, v in clf.net.state_dict().items()},
    }


def save_torch(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def run_fingerprint(params: TrainParams, data: TrainData) -> str:
    """Same params and same split → same run; only then is a checkpoint resumed."""
    return hashlib.sha256((params.model_dump_json() + data.fingerprint()).encode()).hexdigest()[:16]


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at `path` if it is an unfinished run with these params and data.

    A finished run is never resumed: DVC reruns the stage when the code
    changed, and that must retrain rather than return the old model.
    """
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint or state.get("finished"):
        return None
    return state


def fit(
    params: TrainParams,
    data: TrainData,
    out_dir: Path | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    show_progress: bool = True,
) -> FitResult:
    """Train; with `out_dir`, checkpoint every epoch, resume, and keep the best model."""
    seed_everything(params.seed)
    device = pick_device(params.device)
    classes = data.classes
    clf = build_classifier(params.model, params.weights, len(classes), params.dropout)
    clf.net.to(device)
    train_set = CachedImages(
        data.part("train"), data.clean_dir, data.train_pipeline, classes, params.seed
    )
    val_set = CachedImages(data.part("val"), data.clean_dir, data.eval_pipeline, classes)
    train_loader = make_loader(train_set, params.batch_size, True, params.num_workers, params.seed)
    val_loader = make_loader(val_set, params.batch_size, False, params.num_workers, params.seed)
    optimizer = torch.optim.AdamW(param_groups(clf, params))
    scheduler = make_scheduler(optimizer, params, len(train_loader))
    criterion = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
    plain_criterion = nn.CrossEntropyLoss()

    result = FitResult()
    start_epoch, bad_epochs = 0, 0
    fingerprint = run_fingerprint(params, data)
    ckpt_path = out_dir / CHECKPOINT if out_dir else None
    if ckpt_path:
        state = load_checkpoint(ckpt_path, fingerprint)
        if state is not None:
            clf.net.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            result.history = [EpochMetrics(**m) for m in json.loads(state["history"])]
            result.best_epoch = state["best_epoch"]
            result.best_val_loss = state["best_val_loss"]
            bad_epochs = state["bad_epochs"]
            start_epoch = state["epoch"] + 1
            result.resumed_from = start_epoch

    for epoch in range(start_epoch, params.epochs):
        frozen = epoch < params.freeze_epochs
        clf.freeze_backbone(frozen)
        clf.net.train()
        total_loss, correct, seen = 0.0, 0, 0
        with Progress(transient=True, disable=not show_progress) as progress:
            bar = progress.add_task(
                f"epoch {epoch + 1}/{params.epochs}{' (head only)' if frozen else ''}",
                total=len(train_loader),
            )
            for images, labels in train_loader:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with autocast(device):
                    logits = clf.net(images)
                    loss = criterion(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(labels)
                correct += (logits.argmax(1) == labels).sum().item()
                seen += len(labels)
                progress.advance(bar)
        val_loss = val_acc = None
        if len(val_set):
            logits, targets = predict_logits(clf.net, val_loader, device)
            val_loss = plain_criterion(logits, targets).item()
            val_acc = (logits.argmax(1) == targets).float().mean().item()
        metrics = EpochMetrics(
            epoch=epoch,
            frozen=frozen,
            lr=optimizer.param_groups[0]["lr"],
            train_loss=total_loss / max(seen, 1),
            train_accuracy=correct / max(seen, 1),
            val_loss=val_loss,
            val_accuracy=val_acc,
        )
        result.history.append(metrics)
        monitored = val_loss if val_loss is not None else metrics.train_loss
        if monitored < result.best_val_loss:
            result.best_val_loss, result.best_epoch, bad_epochs = monitored, epoch, 0
            if out_dir:
                save_torch(model_payload(clf, params, data), out_dir / MODEL)
        else:
            bad_epochs += 1
        stop = bad_epochs >= params.patience
        if ckpt_path:
            save_torch(
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": clf.net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "history": json.dumps([asdict(m) for m in result.history]),
                    "best_epoch": result.best_epoch,
                    "best_val_loss": result.best_val_loss,
                    "bad_epochs": bad_epochs,
                    "finished": stop or epoch + 1 == params.epochs,
                },
                ckpt_path,
            )
        if on_epoch:
            on_epoch(metrics)
        if stop:
            result.stopped_early = True
            break
    return result


def load_model(path: Path, device: str = "cpu") -> tuple[nn.Module, dict]:
    """The trained network and its metadata from a model.pt (never unpickles objects)."""
    payload = torch.load(path, map_location=device, weights_only=True)
    clf = build_classifier(payload["arch"], "none", len(payload["classes"]), payload["dropout"])
    clf.net.load_state_dict(payload["state_dict"])
    clf.net.to(device).eval()
    return clf.net, payload
