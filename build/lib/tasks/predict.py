"""Predictions from a model.pt alone: raw image → the clean stage's decoding → eval pipeline → net.

The model file carries the class names, the serialized eval pipeline and the
clean params it was trained with, so no project params are needed. The model
is loaded and run by tasks/inference.py's LoadedModel, as for the clean cache.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from PIL import Image

from params import CleanParams
from tasks.clean_cache import prepare
from tasks.decode import RejectedImage, decode
from tasks.inference import LoadedModel, class_labels


@dataclass
class Listing:
    images: list[Path]
    skipped: list[Path]  # files (or dangling links) without an image extension Pillow knows


def list_images(target: Path) -> Listing:
    """`target` itself if it is a file, else every image file under the folder (sorted);
    hidden files are left out, other files are listed as skipped so the user hears of them."""
    if target.is_file():
        return Listing([target], [])
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is neither an image file nor a folder")
    known = {ext.lower() for ext in Image.registered_extensions()}
    images, skipped = [], []
    for p in sorted(target.rglob("*")):
        if p.name.startswith(".") or p.is_dir():
            continue
        (images if p.is_file() and p.suffix.lower() in known else skipped).append(p)
    return Listing(images, skipped)


def image_tensor(path: Path, clean: CleanParams, pipeline: A.Compose) -> torch.Tensor:
    """One raw image as the model's input tensor (CHW), decoded exactly as in training."""
    decoded = decode(path.read_bytes(), clean.background, clean.max_pixels, clean.max_side)
    image = prepare(decoded, clean.max_side)
    return pipeline(image=np.asarray(image))["image"]


def predict_files(
    model_file: Path,
    paths: list[Path],
    device: str = "cpu",
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[int, str], dict]:
    """(probabilities, errors, metadata) of raw image files, decoded with the model's clean
    params: an unreadable file has a NaN row and its reason in errors[its index].
    `on_batch(n)` hears of every n files read (a progress bar)."""
    model = LoadedModel.load(model_file, device)
    clean = model.clean
    errors: dict[int, str] = {}

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, len(paths), batch_size):
            tensors, index = [], []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    tensors.append(image_tensor(paths[i], clean, model.pipeline))
                except (RejectedImage, OSError) as exc:
                    errors[i] = str(exc)
                    continue
                index.append(i)
            if tensors:
                yield torch.stack(tensors), torch.tensor(index)
            if on_batch is not None:  # the batch is scored once the consumer asks for more
                on_batch(min(start + batch_size, len(paths)) - start)

    probs = np.full((len(paths), len(model.classes)), np.nan, dtype=np.float64)
    scored, index = model.probs(batches())
    probs[index] = scored
    return probs, errors, model.meta


def folder_classes(paths: list[Path], root: Path, meta: dict) -> list[str]:
    """The class each image's folder names ('' for none), so a held-out ImageFolder tree
    scores itself: the nearest folder from the image up to `root` whose name is a class's
    label or lands on its folder (`Food & Drink` and `food_drink` both name food_drink)."""
    from tasks.sources import safe_label

    labels = class_labels(meta)
    named = dict(zip(meta["classes"], labels, strict=True)) | dict(zip(labels, labels, strict=True))

    @functools.cache  # one answer per folder name, not per image
    def label_of(name: str) -> str:
        if name in named:
            return named[name]
        try:
            return named.get(safe_label(name), "")
        except ValueError:  # a name with nothing printable in it
            return ""

    found = []
    for path in paths:
        parents = [p for p in path.parents if p.is_relative_to(root)]
        found.append(next((c for p in parents if (c := label_of(p.name))), ""))
    return found


def predict_images(
    model_file: Path,
    paths: list[Path],
    top_k: int = 3,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
    root: Path | None = None,
) -> pd.DataFrame:
    """One row per image, in `paths` order: predicted class, confidence and the top-k;
    an unreadable file gets its reason in `error`. With `root`, `actual` holds the class
    each image's folder under it names (folder_classes)."""
    probs, errors, meta = predict_files(model_file, paths, batch_size=batch_size, on_batch=on_batch)
    classes = class_labels(meta)  # the user's labels, not the folder names
    actual = folder_classes(paths, root, meta) if root is not None else None
    if actual is not None and not any(actual):
        actual = None  # no folder names a class: no `actual` column
    k = max(1, min(top_k, len(classes)))
    rows: list[dict] = []
    for i, path in enumerate(paths):
        known = {"actual": actual[i]} if actual is not None else {}
        if i in errors:
            rows.append({"path": str(path)} | known | {"error": errors[i]})
            continue
        top = torch.from_numpy(probs[i]).topk(k)
        row: dict = {
            "path": str(path),
            **known,
            "predicted": classes[int(top.indices[0])],
            "confidence": round(float(top.values[0]), 4),
        }
        for rank, (v, c) in enumerate(zip(top.values, top.indices, strict=True), start=1):
            row[f"top{rank}"] = classes[int(c)]
            row[f"p{rank}"] = round(float(v), 4)
        rows.append(row | {"error": ""})
    frame = pd.DataFrame(rows)
    return frame[[c for c in frame.columns if c != "error"] + ["error"]]
