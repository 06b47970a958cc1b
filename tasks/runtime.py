"""Any model file as one scorer: a model.pt (PyTorch), an exported `.onnx` (onnxruntime) or `.ts`
(TorchScript).

predict, the export's accuracy gate and the export benchmark all score through `open_model`, so
the file an app ships is tested by the same code path as the model that was trained. Every
format carries what scoring needs (classes, the clean stage's decoding, the eval pipeline); an
exported pixels-in graph takes the eval pipeline's uint8 output (its resize and crop) and does
the normalisation itself, a float-in graph takes the whole eval pipeline's output.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import albumentations as A
import numpy as np
import torch

from params import CleanParams
from tasks.inference import LoadedModel, ModelFormatError

EXPORT_SUFFIXES = {".onnx": "onnx", ".ts": "torchscript"}
MODEL_SUFFIXES = (".pt", ".pth")


class Scorer(Protocol):
    """What predict and the gate need of a model, whatever its file format."""

    meta: dict
    pipeline: A.Compose  # decoded image (HWC uint8) → one input of `probs`

    @property
    def classes(self) -> list[str]: ...

    @property
    def clean(self) -> CleanParams: ...

    def probs(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tta: bool = False
    ) -> tuple[np.ndarray, np.ndarray]: ...


def pixel_pipeline(meta: dict) -> A.Compose:
    """The eval pipeline up to its normalisation: what a pixels-in export takes (uint8 HWC)."""
    from tasks.dataset import split_pipeline
    from tasks.inference import eval_pipeline

    worker, prep, _ = split_pipeline(eval_pipeline(meta))
    if prep is None:
        raise ModelFormatError("the model's eval pipeline does not end in Normalize + ToTensorV2")
    return worker


@dataclass
class ExportedModel:
    """An exported file: its metadata (each ONNX/TorchScript value decoded from JSON) and a
    function from an input batch (numpy) to (logits, probabilities)."""

    path: Path
    format: str
    meta: dict
    pipeline: A.Compose
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def clean(self) -> CleanParams:
        return CleanParams.model_validate(self.meta["clean"])

    @property
    def pixels_in(self) -> bool:
        return self.meta["input"]["dtype"] == "uint8"

    def probs(
        self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], tta: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, targets) of (images, targets) batches; `tta` mirrors each image too."""
        probs, targets = [], []
        for images, labels in batches:
            batch = np.ascontiguousarray(images.numpy())
            p = self.run(batch)[1]
            if tta:
                axis = 2 if self.pixels_in else 3  # the width axis of NHWC / NCHW
                p = (p + self.run(np.ascontiguousarray(np.flip(batch, axis)))[1]) / 2
            probs.append(p.astype(np.float64))
            targets.append(labels.numpy())
        if not probs:
            return np.zeros((0, len(self.classes))), np.zeros(0, dtype=int)
        return np.concatenate(probs), np.concatenate(targets)


def _first_line(exc: BaseException) -> str:
    return next(iter(str(exc).splitlines()), type(exc).__name__)


def _decoded(props: dict[str, str], path: Path) -> dict:
    needed = ("classes", "eval_pipeline", "clean", "input")
    missing = [k for k in needed if k not in props]
    if missing:
        raise ModelFormatError(
            f"{path}: not a visiontune export (no {', '.join(missing)} in its metadata)"
        )
    meta = {k: json.loads(v) for k, v in props.items() if not k.startswith("onnx.")}
    meta["eval_pipeline"] = json.dumps(meta["eval_pipeline"])  # as model.pt stores it
    return meta


def onnx_session(path: Path, threads: int = 0):
    """An onnxruntime CPU session; `threads` 0 = onnxruntime's default (all cores)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: no warnings about unused initializers
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_onnx(path: Path, threads: int = 0) -> ExportedModel:
    try:
        session = onnx_session(path, threads)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise ModelFormatError(f"{path}: not an ONNX model ({_first_line(exc)})") from exc
    meta = _decoded(session.get_modelmeta().custom_metadata_map, path)
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = session.run(["logits", "probabilities"], {name: batch})
        return logits, probs

    return _exported(path, "onnx", meta, run)


def open_torchscript(path: Path) -> ExportedModel:
    files = {"meta.json": ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=files)
    except (RuntimeError, ValueError) as exc:
        raise ModelFormatError(f"{path}: not a TorchScript model ({_first_line(exc)})") from exc
    try:
        props = json.loads(files["meta.json"] or "{}")
    except json.JSONDecodeError:
        props = {}
    meta = _decoded(props, path)

    @torch.no_grad()
    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, probs = module(torch.from_numpy(batch))
        return logits.numpy(), probs.numpy()

    return _exported(path, "torchscript", meta, run)


def _exported(path: Path, fmt: str, meta: dict, run) -> ExportedModel:
    from tasks.inference import eval_pipeline

    pixels = meta["input"]["dtype"] == "uint8"
    pipeline = pixel_pipeline(meta) if pixels else eval_pipeline(meta)
    return ExportedModel(path, fmt, meta, pipeline, run)


def open_model(path: Path, threads: int = 0) -> Scorer:
    """The scorer of a model.pt, .onnx or .ts file; anything else is a ModelFormatError."""
    suffix = path.suffix.lower()
    if not path.is_file():
        raise ModelFormatError(f"no model file at {path}")
    if suffix == ".onnx":
        return open_onnx(path, threads)
    if suffix == ".ts":
        return open_torchscript(path)
    if suffix in MODEL_SUFFIXES:
        try:
            return LoadedModel.load(path)
        except ModelFormatError:
            raise
        except Exception as exc:  # not a zip / not a weights-only pickle
            raise ModelFormatError(f"{path}: not a model.pt ({_first_line(exc)})") from exc
    raise ModelFormatError(
        f"{path}: unknown model format {suffix or '(no suffix)'!r}; "
        "use a model.pt, an .onnx or a .ts (TorchScript) file"
    )
