"""Export a trained model to ONNX (torch.onnx) or TorchScript (torch.jit), with a parity check.

By default the exported graph takes what an app has: uint8 RGB pixels
(N, size, size, 3) at the model's size; it converts them to float, normalises
with the stored mean/std and changes the layout to NCHW itself (`PixelsIn`),
so an app only resizes. `pixels=False` keeps the bare network's input, a float
batch (N, 3, size, size) already normalised. Both graphs return `logits` and
`probabilities` (softmax), and carry what an app needs as metadata (ONNX
metadata_props / a TorchScript extra file `meta.json`, the same keys, each
value a JSON text). After writing, the same images go through the PyTorch
model (normalised by albumentations, as in training) and the exported file,
and the export is removed unless the outputs match.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import albumentations as A
import numpy as np
import torch
from torch import nn

from tasks.files import atomic_path
from tasks.inference import class_labels
from tasks.label_task import task_named

Format = Literal["onnx", "torchscript"]
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts"}
OUTPUTS = ["logits", "probabilities"]
PIXELS_INPUT = {"name": "pixels", "dtype": "uint8", "layout": "NHWC", "channels": "RGB"}
FLOAT_INPUT = {"name": "image", "dtype": "float32", "layout": "NCHW", "channels": "RGB"}
INTERPOLATION = {0: "nearest", 1: "bilinear", 2: "bicubic", 3: "area", 4: "lanczos"}  # cv2 codes


class ExportParityError(RuntimeError):
    pass


@dataclass
class Parity:
    max_abs_diff: float
    same_argmax: bool  # the same decisions: top-1, or every label's yes/no at its threshold
    n_inputs: int

    def ok(self, atol: float) -> bool:
        return self.max_abs_diff <= atol and self.same_argmax


class PixelsIn(nn.Module):
    """uint8 RGB (N, H, W, 3) → float, albumentations' normalisation, NCHW → the network;
    returns (logits, probabilities)."""

    def __init__(
        self, net: nn.Module, mean: list[float], std: list[float], activation: str = "softmax"
    ) -> None:
        super().__init__()
        self.net, self.sigmoid = net, activation == "sigmoid"  # fixed when traced
        # albumentations: (pixel - 255·mean) · 1/(255·std), in float32
        self.register_buffer("offset", torch.tensor(mean).mul(255.0).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(std).mul(255.0).reciprocal().view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # in the network's dtype (fp16 once `.half()`), logits and softmax in float32
        x = (pixels.permute(0, 3, 1, 2).to(self.offset.dtype) - self.offset) * self.scale
        logits = self.net(x).float()
        return logits, logits.sigmoid() if self.sigmoid else logits.softmax(1)


class FloatIn(nn.Module):
    """The bare network on a normalised float NCHW batch; returns (logits, probabilities)."""

    def __init__(self, net: nn.Module, activation: str = "softmax") -> None:
        super().__init__()
        self.net, self.sigmoid = net, activation == "sigmoid"

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = next(self.net.parameters()).dtype  # fp16 once `.half()`; the input stays fp32
        logits = self.net(image.to(dtype)).float()
        return logits, logits.sigmoid() if self.sigmoid else logits.softmax(1)


def resize_rule(meta: dict) -> dict:
    """How the model's own preprocessing sizes an image: the clean stage's decode (longest side
    at most max_side, Lanczos, never upscaled), then the eval pipeline's resize/crop steps."""
    from params import CleanParams

    clean = CleanParams.model_validate_json(meta["clean"])
    steps = []
    for t in A.from_dict(json.loads(meta["eval_pipeline"])).transforms:
        name = type(t).__name__
        if name in ("Normalize", "ToTensorV2"):
            continue
        step: dict = {"op": name}
        for key in ("max_size", "height", "width", "size"):
            if getattr(t, key, None) is not None:
                value = getattr(t, key)
                step[key] = list(value) if isinstance(value, tuple) else value
        if hasattr(t, "interpolation"):
            step["interpolation"] = INTERPOLATION.get(int(t.interpolation), str(t.interpolation))
        steps.append(step)
    return {"decode": {"max_side": clean.max_side, "filter": "lanczos"}, "steps": steps}


def metadata(meta: dict, pixels: bool = True, precision: str = "fp32") -> dict[str, str]:
    """What an app needs, each value a JSON text: classes (what the outputs index), labels,
    size, mean/std, the resize rule, the input, the task and its thresholds, and the model's
    decoding and eval pipeline (so `visiontune predict` preprocesses exactly as in training)."""
    keys = ("arch", "classes", "image_size", "mean", "std")
    values = {k: meta[k] for k in keys} | {
        "labels": class_labels(meta),
        "task": meta.get("task", "single_label"),
        "thresholds": meta.get("thresholds"),  # per-label thresholds (multi-label); null here
        "input": PIXELS_INPUT if pixels else FLOAT_INPUT,
        "outputs": OUTPUTS,
        "precision": precision,
        "resize": resize_rule(meta),
        "clean": json.loads(meta["clean"]),
        "eval_pipeline": json.loads(meta["eval_pipeline"]),
    }
    return {k: json.dumps(v) for k, v in values.items()}


def graph(net: nn.Module, meta: dict, pixels: bool) -> nn.Module:
    """The exported module: probabilities by the model's kind (softmax, or a sigmoid per
    label for multi-label models)."""
    activation = task_named(meta.get("task")).activation_name
    wrapped = (
        PixelsIn(net, meta["mean"], meta["std"], activation) if pixels else FloatIn(net, activation)
    )
    return wrapped.cpu().eval()


def export_onnx(
    wrapped: nn.Module, props: dict[str, str], out: Path, example: torch.Tensor
) -> Path:
    import onnx

    name = PIXELS_INPUT["name"] if example.dtype == torch.uint8 else FLOAT_INPUT["name"]
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapped,
            (example,),
            input_names=[name],
            output_names=OUTPUTS,
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        model = program.model_proto
        for key, value in props.items():
            model.metadata_props.add(key=key, value=value)
        onnx.checker.check_model(model)
        onnx.save(model, str(tmp))
    return out


def export_torchscript(
    wrapped: nn.Module, props: dict[str, str], out: Path, example: torch.Tensor
) -> Path:
    """torch.jit.trace (TorchScript is deprecated upstream but still what many runtimes load)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(wrapped, example)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(tmp), _extra_files={"meta.json": json.dumps(props)})
    return out


def run_exported(path: Path, fmt: Format, inputs: np.ndarray) -> np.ndarray:
    """Logits from the exported file, through its own runtime (onnxruntime / torch.jit.load)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return session.run(["logits"], {name: inputs})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(torch.from_numpy(inputs))[0].numpy()


def normalised(pixels: np.ndarray, meta: dict) -> torch.Tensor:
    """uint8 NHWC → the float NCHW batch training fed the network (albumentations' Normalize)."""
    norm = A.Normalize(mean=meta["mean"], std=meta["std"], max_pixel_value=255.0)
    return torch.from_numpy(np.stack([norm(image=p)["image"] for p in pixels])).permute(0, 3, 1, 2)


def torch_logits(net: nn.Module, pixels: np.ndarray, meta: dict) -> np.ndarray:
    """The PyTorch model's logits for uint8 NHWC pixels, normalised as in training."""
    net.eval()
    with torch.no_grad():
        return net(normalised(pixels, meta)).float().numpy()


def check_parity(
    net: nn.Module, path: Path, fmt: Format, pixels: np.ndarray, meta: dict, pixels_in: bool = True
) -> Parity:
    """PyTorch vs the exported file on the same uint8 pixels (NHWC)."""
    expected = torch_logits(net, pixels, meta)
    inputs = pixels if pixels_in else normalised(pixels, meta).numpy()
    got = run_exported(path, fmt, inputs)
    task, cut = task_named(meta.get("task")), meta.get("thresholds")
    return Parity(
        max_abs_diff=float(np.abs(expected - got).max()),
        same_argmax=bool((task.decisions(expected, cut) == task.decisions(got, cut)).all()),
        n_inputs=len(pixels),
    )


def export_model(
    net: nn.Module,
    meta: dict,
    fmt: Format,
    out: Path,
    pixels: np.ndarray,
    atol: float = 1e-4,
    pixels_in: bool = True,
) -> Parity:
    """Write the export and verify it on `pixels` (uint8 NHWC at the model's size); a mismatch
    removes the file and raises."""
    net = net.cpu().eval()
    wrapped = graph(net, meta, pixels_in)
    sample = pixels[:2] if len(pixels) >= 2 else pixels
    example = torch.from_numpy(sample) if pixels_in else normalised(sample, meta)
    props = metadata(meta, pixels_in)
    if fmt == "onnx":
        export_onnx(wrapped, props, out, example)
    else:
        export_torchscript(wrapped, props, out, example)
    parity = check_parity(net, out, fmt, pixels, meta, pixels_in)
    if not parity.ok(atol):
        out.unlink(missing_ok=True)
        raise ExportParityError(
            f"{fmt} export differs from the PyTorch model: max |Δlogit| "
            f"{parity.max_abs_diff:.2e} (tolerance {atol:.0e}), same top-1: {parity.same_argmax}"
        )
    return parity
