"""`visiontune export` as a flow: an ONNX/TorchScript export checked on real test images, and
optionally an INT8/fp16 ONNX file kept only if it passes the accuracy gate."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger

from flows.naming import stage_run_name
from flows.project import Project
from tasks.export import SUFFIX, Format, Parity, export_model, metadata
from tasks.inference import LoadedModel

PARITY_IMAGES = 16


class ExportDataError(ValueError):
    """The project's data cannot check this export (no split, or other classes)."""


@dataclass
class ExportResult:
    path: Path
    parity: Parity
    meta: dict
    pixels: bool
    quantized: Path | None = None
    gate: object | None = None  # tasks.quantize.Gate


def _split_rows(project: Project, part: str) -> pd.DataFrame:
    split = project.artifacts("split") / "split.parquet"
    if not split.is_file():
        return pd.DataFrame()
    frame = pd.read_parquet(split)
    return frame[frame["split"] == part]


def split_pixels(
    project: Project, model: LoadedModel, part: str, limit: int | None = None
) -> Iterator[tuple[np.ndarray, int]]:
    """(uint8 HWC image at the model's size, target) of a split's images from the clean cache,
    through the model's eval pipeline up to its normalisation; `limit` takes an even sample."""
    rows = _split_rows(project, part)
    if limit is not None and len(rows) > limit:
        rows = rows.sample(n=limit, random_state=0).sort_index()
    column = model.task.column
    known = set(model.classes)
    seen = set(rows[column]) if column == "label" else set(model.task.classes(rows))
    unknown = sorted(seen - known) if len(rows) else []
    if unknown:
        raise ExportDataError(
            f"the model's classes do not match the project's data: the {part} split has "
            f"{', '.join(map(str, unknown[:5]))}, which the model does not know; export the "
            "model trained on this data, or check it on its own project"
        )
    if rows.empty:
        return
    dataset = model.cached(rows, project.artifacts("clean"))
    for i in range(len(dataset)):
        yield dataset.uint8(i).permute(1, 2, 0).numpy(), dataset.targets[i]


def parity_pixels(project: Project, model: LoadedModel) -> np.ndarray:
    """Up to 16 test images as the model sees them (uint8 NHWC); random pixels outside a
    project."""
    images = [image for image, _ in split_pixels(project, model, "test", PARITY_IMAGES)]
    if images:
        return np.stack(images)
    size = model.meta["image_size"]
    return np.random.default_rng(0).integers(0, 256, (8, size, size, 3), dtype=np.uint8)


@flow(name="export", flow_run_name=stage_run_name("export"), log_prints=True)
def export_flow(
    model: str,
    fmt: Format = "onnx",
    out: str | None = None,
    atol: float = 1e-4,
    root: str = ".",
    pixels: bool = True,
    quantize: str | None = None,
    calibration: int = 300,
    min_agreement: float = 0.99,
    max_drop: float = 0.01,
) -> ExportResult:
    """The exported file, its parity with the PyTorch model and, with `quantize` (int8/fp16,
    ONNX only), the quantized file and its gate; a failed gate removes that file and raises."""
    from tasks.quantize import (
        GateError,
        batched,
        export_fp16,
        gate,
        quantize_int8,
        quantized_path,
    )
    from tasks.runtime import open_onnx

    logger = get_run_logger()
    project = Project(Path(root))
    loaded = LoadedModel.load(Path(model))
    dest = Path(out) if out else project.artifacts("export") / f"model{SUFFIX[fmt]}"
    parity = export_model(
        loaded.net,
        loaded.meta,
        fmt,
        dest,
        parity_pixels(project, loaded),
        atol=atol,
        pixels_in=pixels,
    )
    logger.info(f"exported {dest}: max |Δlogit| {parity.max_abs_diff:.2e} on {parity.n_inputs}")
    meta = {k: v for k, v in loaded.meta.items() if k != "state_dict"}
    result = ExportResult(dest, parity, meta, pixels)
    if quantize is None:
        return result
    if _split_rows(project, "test").empty:
        raise ExportDataError("quantizing needs the project's split: run `visiontune run` first")
    target = quantized_path(dest, quantize)  # type: ignore[arg-type]
    props = metadata(loaded.meta, pixels, quantize)
    if quantize == "int8":
        images = [image for image, _ in split_pixels(project, loaded, "train", calibration)]
        stacked = np.stack(images)
        inputs = stacked if pixels else _normalised(stacked, loaded.meta)
        quantize_int8(dest, target, inputs, props)
    else:
        export_fp16(loaded.net, loaded.meta, target, parity_pixels(project, loaded), pixels)
    checked = gate(
        loaded.net,
        open_onnx(target),
        batched(split_pixels(project, loaded, "test")),
        loaded.meta,
        quantize,
    )
    result.quantized, result.gate = target, checked
    if not checked.ok(min_agreement, max_drop):
        target.unlink(missing_ok=True)
        raise GateError(
            f"{quantize} export refused and removed: {checked.describe()}; the gate asks for "
            f"agreement ≥ {min_agreement:.2%} and a loss of ≤ {max_drop * 100:.1f} points"
        )
    logger.info(f"{quantize} export {target}: {checked.describe()}")
    return result


def _normalised(pixels: np.ndarray, meta: dict) -> np.ndarray:
    from tasks.export import normalised

    return np.concatenate(
        [normalised(pixels[i : i + 64], meta).numpy() for i in range(0, len(pixels), 64)]
    )
