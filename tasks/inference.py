"""The model file and inference: what training writes, and how every consumer reads it.

model.pt holds weights, classes and the exact preprocessing (the eval pipeline
and the clean stage's decoding), so evaluate, the registry, crossval, predict
and export all score a model with its own preprocessing, whatever today's
params say: each loads it as a `LoadedModel`, which builds the eval pipeline
and runs batched inference, from the clean cache (`predict_probs`) or from raw
files (tasks/predict.py's `predict_files`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from torch import nn

from params import CleanParams
from tasks.checkpoint import load_torch
from tasks.label_task import SingleLabel, task_named
from tasks.model import Classifier, build_classifier

MODEL = "model.pt"
MODEL_FORMAT = 2


class ModelFormatError(ValueError):
    """A model file this version cannot read (written by another version, or not a model)."""


def autocast(device: torch.device, dtype: torch.dtype | None = None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def model_payload(state_dict: dict, clf: Classifier, params, data) -> dict:
    """What prediction needs without the params: weights, classes, preprocessing."""
    return {
        "format": MODEL_FORMAT,
        "arch": clf.arch or params.model,  # rebuildable offline (an hf-hub model: its timm arch)
        "arch_args": clf.arch_args,
        "model": params.model,
        "classes": data.classes,  # folder names: what the logits index
        "labels": data.class_labels,  # the same classes as the user named them
        "image_size": data.image_size,
        "mean": list(clf.mean),
        "std": list(clf.std),
        "dropout": params.dropout,
        # the eval pipeline (A.to_dict) and the clean stage's decoding: raw image → tensor
        "eval_pipeline": json.dumps(A.to_dict(data.eval_pipeline)),
        "clean": data.clean.model_dump_json(),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
    } | data.task.payload()


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The trained network and its metadata from a model.pt (never unpickles objects)."""
    payload = load_torch(path, device)
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != MODEL_FORMAT:
        raise ModelFormatError(
            f"{path}: model format {found!r}, this visiontune reads format {MODEL_FORMAT}; "
            "retrain it (visiontune run --force) or use the version that wrote it"
        )
    clf = build_classifier(
        payload["arch"],
        "none",
        len(payload["classes"]),
        payload["dropout"],
        arch_args=payload.get("arch_args"),
    )
    clf.net.load_state_dict(payload["state_dict"])
    clf.net.to(device).eval()
    return clf.net, payload


def class_labels(meta: dict) -> list[str]:
    """The user's label of each class (models trained before labels were stored: folders)."""
    return list(meta.get("labels") or meta["classes"])


def eval_pipeline(meta: dict) -> A.Compose:
    """The eval pipeline the model was trained with (stored in model.pt)."""
    return A.from_dict(json.loads(meta["eval_pipeline"]))


@torch.no_grad()
def predict_logits(
    net: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    dtype: torch.dtype | None = None,
    tta: bool = False,
    task: SingleLabel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) for a whole loader (any iterable of batches), in loader order.

    With `tta`, the logits are those of the mean probabilities of the image and its mirror.
    """
    net.eval()
    outs, targets = [], []
    for images, labels in loader:
        images = images.to(device, non_blocking=True)
        with autocast(device, dtype):
            logits = net(images).float()
            if tta:
                mirrored = net(torch.flip(images, dims=[3])).float()
                logits = (task or SingleLabel()).merge_tta(logits, mirrored)
        outs.append(logits.cpu())
        targets.append(labels)
    if not outs:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(outs), torch.cat(targets)


@dataclass
class LoadedModel:
    """A model.pt ready to score: its network, metadata and its own eval pipeline."""

    net: nn.Module
    meta: dict
    pipeline: A.Compose
    device: torch.device

    @classmethod
    def load(cls, path: Path, device: str | torch.device = "cpu") -> LoadedModel:
        device = torch.device(device)
        net, meta = load_model(path, device)
        return cls(net, meta, eval_pipeline(meta), device)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def task(self) -> SingleLabel:
        return task_named(self.meta.get("task"))

    @property
    def thresholds(self) -> list[float] | None:
        """Multi-label: the threshold per label chosen on the validation split."""
        return self.meta.get("thresholds")

    @property
    def clean(self) -> CleanParams:
        """The clean stage's decoding settings the model was trained with (raw files)."""
        return CleanParams.model_validate_json(self.meta["clean"])

    def cached(self, rows: pd.DataFrame, clean_dir: Path):
        """Split `rows` from the clean cache through the model's eval pipeline (a CachedImages).

        Targets index the model's classes; a label it does not know gets an index
        ≥ len(classes) (multi-label: is dropped)."""
        from tasks.dataset import CachedImages

        return CachedImages(rows, clean_dir, self.pipeline, self.classes)

    def probs(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tta: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, targets) of (images, targets) batches, in batch order."""
        logits, targets = predict_logits(self.net, batches, self.device, tta=tta, task=self.task)
        if not len(logits):
            return np.zeros((0, len(self.classes))), np.zeros(0, dtype=int)
        return self.task.activation(logits).numpy(), targets.numpy()


def predict_probs(
    model_file: Path,
    rows: pd.DataFrame,
    clean_dir: Path,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probabilities, targets, metadata) of split `rows` read from the clean cache, through
    the model's own eval pipeline. Targets index the model's classes; a label the model does
    not know gets an index ≥ len(classes)."""
    from tasks.dataset import make_loader

    model = LoadedModel.load(model_file, device)
    if rows.empty:
        return *model.probs([]), model.meta
    loader = make_loader(model.cached(rows, clean_dir), batch_size, False, 0, 0)
    return *model.probs(loader, tta), model.meta
