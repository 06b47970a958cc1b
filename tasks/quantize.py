"""Smaller ONNX files for shipping, kept only when an accuracy gate on the test split passes.

INT8: onnxruntime's static quantization in QDQ format (what its CPU kernels are optimised
for), per-channel weights (s8) and activations (u8) calibrated by min/max on train images
taken through the model's own eval pipeline. fp16: the network exported in half precision by torch's
own exporter, the graph's inputs and outputs kept as they were (uint8 pixels in, float32 out).

The gate compares the quantized file with the PyTorch model on the same test images: the
share with the same top-1 class (agreement) and the loss of accuracy against the labels.
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from tasks.files import atomic_path

Precision = Literal["int8", "fp16"]
SUFFIX = {"int8": ".int8.onnx", "fp16": ".fp16.onnx"}


class GateError(RuntimeError):
    """The quantized file strays too far from the PyTorch model; it has been removed."""


@dataclass
class Gate:
    precision: str
    n_images: int
    agreement: float  # share of test images whose top-1 matches the PyTorch model's
    accuracy: float  # the quantized file's top-1 accuracy on the test labels
    reference_accuracy: float  # the PyTorch model's

    @property
    def drop(self) -> float:
        return self.reference_accuracy - self.accuracy

    def ok(self, min_agreement: float, max_drop: float) -> bool:
        return self.agreement >= min_agreement and self.drop <= max_drop

    def describe(self) -> str:
        return (
            f"agreement with PyTorch {self.agreement:.2%} on {self.n_images} test images, "
            f"accuracy {self.accuracy:.3f} vs {self.reference_accuracy:.3f} "
            f"({(self.accuracy - self.reference_accuracy) * 100:+.1f} points)"
        )


def quantized_path(fp32: Path, precision: Precision) -> Path:
    """model.onnx → model.int8.onnx / model.fp16.onnx beside it."""
    return fp32.with_name(fp32.name.removesuffix(".onnx") + SUFFIX[precision])


class PixelBatches:
    """onnxruntime's CalibrationDataReader protocol over in-memory input batches."""

    def __init__(self, name: str, inputs: np.ndarray, batch_size: int = 16) -> None:
        self._batches = iter(
            [{name: inputs[i : i + batch_size]} for i in range(0, len(inputs), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _with_props(path: Path, props: dict[str, str]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, props: dict[str, str]) -> Path:
    """Static QDQ INT8 of the fp32 ONNX file, calibrated on `calibration` (its input batch)."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    name = onnxruntime.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()
    with tempfile.TemporaryDirectory() as tmp, atomic_path(out) as dest:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dest),
            PixelBatches(name[0].name, calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibMaxIntermediateOutputs": 8},  # bounded memory for any N
        )
        _with_props(dest, props)
    return out


def export_fp16(
    net: nn.Module, meta: dict, out: Path, example: np.ndarray, pixels_in: bool = True
) -> Path:
    """The network in fp16 (for GPUs) by torch's own exporter; the input (uint8 pixels or a
    float32 batch) and the float32 outputs stay as in the fp32 file, the softmax in float32."""
    from tasks.export import export_onnx, graph, metadata, normalised

    half = graph(copy.deepcopy(net).cpu(), meta, pixels_in).half()
    inputs = torch.from_numpy(example) if pixels_in else normalised(example, meta)
    return export_onnx(half, metadata(meta, pixels_in, "fp16"), out, inputs)


def gate(
    net: nn.Module,
    exported,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    meta: dict,
    precision: str,
) -> Gate:
    """Agreement and accuracy of `exported` (a runtime.ExportedModel) against the PyTorch `net`
    on (uint8 NHWC pixels, targets) batches. Multi-label models are compared on every
    (image, label) decision at their thresholds: agreement and label accuracy."""
    from tasks.export import normalised
    from tasks.label_task import task_named

    task, cut = task_named(meta.get("task")), meta.get("thresholds")
    same = right = right_ref = n = cells = 0
    net.eval()
    for pixels, targets in batches:
        inputs = normalised(pixels, meta)
        with torch.no_grad():
            reference = task.decisions(net(inputs).float().numpy(), cut)
        fed = pixels if exported.pixels_in else inputs.numpy()
        got = task.decisions(exported.run(np.ascontiguousarray(fed))[0], cut)
        truth = task.truth(targets)
        same += int((got == reference).sum())
        right += int((got == truth).sum())
        right_ref += int((reference == truth).sum())
        n, cells = n + len(truth), cells + truth.size
    if not n:
        raise GateError("no test images to check the quantized model on")
    return Gate(precision, n, same / cells, right / cells, right_ref / cells)


def batched(
    pixels: Iterator[tuple[np.ndarray, int]], batch_size: int = 32
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(HWC image, target) pairs → (NHWC batch, targets) batches."""
    images: list[np.ndarray] = []
    targets: list[int] = []
    for image, target in pixels:
        images.append(image)
        targets.append(target)
        if len(images) == batch_size:
            yield np.stack(images), np.asarray(targets)
            images, targets = [], []
    if images:
        yield np.stack(images), np.asarray(targets)
