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
from tasks.inference import class_labels
from tasks.label_task import task_named
from tasks.runtime import open_model


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
    """One raw image as the model's input, decoded exactly as in training: a float CHW tensor
    (model.pt, float-in exports) or uint8 HWC pixels (pixels-in exports)."""
    decoded = decode(path.read_bytes(), clean.background, clean.max_pixels, clean.max_side)
    image = prepare(decoded, clean.max_side)
    out = pipeline(image=np.asarray(image))["image"]
    return (
        out if isinstance(out, torch.Tensor) else torch.from_numpy(np.array(out))
    )  # a copy: writable


def predict_files(
    model_file: Path,
    paths: list[Path],
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, dict[int, str], dict]:
    """(probabilities, errors, metadata) of raw image files, decoded with the model's clean
    params: an unreadable file has a NaN row and its reason in errors[its index].
    `model_file`: a model.pt or an export (tasks/runtime.py). `on_batch(n)` hears of every
    n files read (a progress bar)."""
    model = open_model(model_file)
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


@dataclass
class Manifest:
    images: list[Path]
    truth: list[list[str]]  # each image's labels as the manifest names them (one: single-label)


def read_manifest(path: Path) -> Manifest:
    """A CSV/parquet of `path` plus `label` or `labels` (a set: space-separated, or split
    on `|`, `;` or `,` where a cell holds one), paths relative to the manifest's folder:
    images whose answer is known, so the predictions score themselves."""
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    column = next((c for c in ("labels", "label") if c in frame.columns), None)
    if "path" not in frame.columns or column is None:
        raise ValueError(f"{path}: a manifest needs a `path` and a `label` or `labels` column")
    cells = frame[column].fillna("").astype(str)
    sep = next(
        (c for c in "|;," if column == "labels" and cells.str.contains(c, regex=False).any()), None
    )
    truth = [
        [x.strip() for x in (cell.split(sep) if sep else cell.split()) if x.strip()]
        if column == "labels"
        else [cell]
        for cell in cells
    ]
    images = [p if p.is_absolute() else path.parent / p for p in map(Path, frame["path"])]
    return Manifest(images, truth)


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
    threshold: float | None = None,
) -> pd.DataFrame:
    """One row per image, in `paths` order: the predicted class, its confidence and the
    top-k (multi-label: the predicted set and every label's probability, decided by the
    model's thresholds or `threshold`); an unreadable file gets its reason in `error`.
    With `root`, `actual` holds the class each image's folder under it names."""
    probs, errors, meta = predict_files(model_file, paths, batch_size=batch_size, on_batch=on_batch)
    classes = class_labels(meta)  # the user's labels, not the folder names
    task = task_named(meta.get("task"))
    thresholds = threshold if threshold is not None else meta.get("thresholds")
    actual = folder_classes(paths, root, meta) if root is not None else None
    if actual is not None and not any(actual):
        actual = None  # no folder names a class: no `actual` column
    rows: list[dict] = []
    for i, path in enumerate(paths):
        known = {"actual": actual[i]} if actual is not None else {}
        if i in errors:
            rows.append({"path": str(path)} | known | {"error": errors[i]})
            continue
        row = task.prediction_row(probs[i], classes, top_k, thresholds)
        rows.append({"path": str(path)} | known | row | {"error": ""})
    frame = pd.DataFrame(rows)
    return frame[[c for c in frame.columns if c != "error"] + ["error"]]
