"""Export a trained model to ONNX (torch.onnx) or TorchScript (torch.jit), with a parity check.

The exported file takes a float batch (N, 3, size, size) already normalised
with the stored mean/std and returns logits; it carries the class names and
preprocessing as metadata (ONNX metadata_props / a TorchScript extra file
`meta.json`). After writing, the same inputs go through the PyTorch model
and the exported one, and the export is rejected unless the outputs match.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from tasks.files import atomic_path
from tasks.inference import class_labels

Format = Literal["onnx", "torchscript"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}


class ExportParityError(RuntimeError):
    pass


@dataclass
class Parity:
    max_abs_diff: float
    same_argmax: bool
    n_inputs: int

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.same_argmax


def metadata(meta: dict) -> dict[str, str]:
    keys = ("arch", "classes", "image_size", "mean", "std")
    return {k: json.dumps(meta[k]) for k in keys} | {"labels": json.dumps(class_labels(meta))}


def export_onnx(net: nn.Module, meta: dict, out: Path, example: torch.Tensor) -> Path:
    import onnx

    net.eval()
    with atomic_path(out) as tmp:
        program = torch.onnx.export(
            net,
            (example,),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            dynamo=True,
            external_data=False,
        )
        model = program.model_proto
        for key, value in metadata(meta).items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out


def export_torchscript(net: nn.Module, meta: dict, out: Path, example: torch.Tensor) -> Path:
    """torch.jit.trace (TorchScript is deprecated upstream but still what many runtimes load)."""
    net.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(net, example)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(tmp), _extra_files={"meta.json": json.dumps(metadata(meta))})
    return out


def run_exported(path: Path, fmt: Format, inputs: torch.Tensor) -> np.ndarray:
    """Logits from the exported file, through its own runtime (onnxruntime / torch.jit.load)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(["logits"], {"image": inputs.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(inputs).numpy()


def check_parity(net: nn.Module, path: Path, fmt: Format, inputs: torch.Tensor) -> Parity:
    net.eval()
    with torch.no_grad():
        expected = net(inputs).float().numpy()
    got = run_exported(path, fmt, inputs)
    return Parity(
        max_abs_diff=float(np.abs(expected - got).max()),
        same_argmax=bool((expected.argmax(1) == got.argmax(1)).all()),
        n_inputs=len(inputs),
    )


def export_model(
    net: nn.Module, meta: dict, fmt: Format, out: Path, inputs: torch.Tensor, atol: float = 1e-4
) -> Parity:
    """Write the export and verify it on `inputs`; a mismatch removes the file and raises."""
    net = net.cpu().eval()
    example = inputs[:2] if len(inputs) >= 2 else inputs
    if fmt == "onnx":
        export_onnx(net, meta, out, example)
    else:
        export_torchscript(net, meta, out, example)
    parity = check_parity(net, out, fmt, inputs)
    if not parity.ok(atol):
        out.unlink(missing_ok=True)
        raise ExportParityError(
            f"{fmt} export differs from the PyTorch model: max |Δlogit| "
            f"{parity.max_abs_diff:.2e} (tolerance {atol:.0e}), same top-1: {parity.same_argmax}"
        )
    return parity
