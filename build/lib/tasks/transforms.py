"""Albumentations transforms chosen by name in params/augment.yaml, checked against the library.

A spec is a one-key mapping `{Name: {argument: value}}`. The name must be an
albumentations transform class and every argument a parameter of its
constructor (albumentations itself only warns about unknown ones); the values
are then checked by the transform's own pydantic schema. Each problem becomes
a TransformError whose message names the item, the transform and the argument.

Albumentations has no automatic augmentation policies, so `TrivialAugmentWide`
and `RandAugment` here wrap torchvision.transforms.v2's as albumentations
image-only transforms: they serialise with `A.save`/`A.load` like any other
(by the name `tasks.transforms.<Name>`), draw their randomness from the
pipeline's seed, and can be named in `custom:` lists.

`check_custom` is the params check of a `custom:` list: params/ itself stays
free of albumentations (and of tasks/), so the project's params loader calls it.
"""

from __future__ import annotations

import difflib
import inspect
import os
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
from albumentations.core.transforms_interface import BaseTransformInitSchema
from pydantic import Field

WHITE = (255, 255, 255)
BORDER_CONSTANT = 0  # cv2.BORDER_CONSTANT: fill the corners a rotation uncovers with `fill`

# What follows RandomResizedCrop in the train pipeline. `light` is the pipeline the
# demo was tuned with; `strong` adds affine moves, blur, grey and cut-outs.
PRESETS: dict[str, list[dict[str, dict[str, Any]]]] = {
    "light": [
        {"HorizontalFlip": {"p": 0.5}},
        {"Rotate": {"limit": 15, "border_mode": BORDER_CONSTANT, "fill": WHITE, "p": 0.5}},
        {
            "ColorJitter": {
                "brightness": 0.2,
                "contrast": 0.2,
                "saturation": 0.2,
                "hue": 0.0,
                "p": 0.8,
            }
        },
    ],
    "strong": [
        {"HorizontalFlip": {"p": 0.5}},
        {
            "Affine": {
                "scale": (0.85, 1.15),
                "translate_percent": (-0.1, 0.1),
                "rotate": (-30, 30),
                "border_mode": BORDER_CONSTANT,
                "fill": WHITE,
                "p": 0.7,
            }
        },
        {
            "ColorJitter": {
                "brightness": 0.4,
                "contrast": 0.4,
                "saturation": 0.4,
                "hue": 0.05,
                "p": 0.8,
            }
        },
        {"ToGray": {"p": 0.1}},
        {"GaussianBlur": {"blur_limit": (3, 5), "p": 0.2}},
        {
            "CoarseDropout": {
                "num_holes_range": (1, 4),
                "hole_height_range": (0.05, 0.15),
                "hole_width_range": (0.05, 0.15),
                "fill": 255,
                "p": 0.3,
            }
        },
    ],
}


class _TorchvisionPolicy(A.ImageOnlyTransform):
    """A torchvision.transforms.v2 augmentation policy on a uint8 HWC image.

    torchvision draws from torch's global RNG; each call runs it under a forked
    RNG seeded from the albumentations pipeline's generator, so a seeded
    pipeline gives the same images run after run (and leaves torch's RNG alone).
    Subclasses name the policy (`_make_policy`) and add their own arguments, if any.
    """

    class InitSchema(BaseTransformInitSchema):
        num_magnitude_bins: int = Field(ge=2)
        interpolation: Literal["nearest", "bilinear"]
        fill: tuple[int, int, int] | None

    def __init__(
        self,
        num_magnitude_bins: int = 31,
        interpolation: Literal["nearest", "bilinear"] = "nearest",
        fill: tuple[int, int, int] | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(p=p)
        self.num_magnitude_bins = num_magnitude_bins
        self.interpolation = interpolation
        self.fill = tuple(fill) if fill is not None else None
        self._built: Any = None

    def _policy_kwargs(self) -> dict[str, Any]:
        from torchvision.transforms import InterpolationMode

        mode = InterpolationMode.NEAREST
        if self.interpolation == "bilinear":
            mode = InterpolationMode.BILINEAR
        return {
            "num_magnitude_bins": self.num_magnitude_bins,
            "interpolation": mode,
            "fill": list(self.fill) if self.fill is not None else None,
        }

    def _make_policy(self) -> Any:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        return {"torch_seed": int(self.random_generator.integers(2**62))}

    def apply(self, img: np.ndarray, torch_seed: int = 0, **params: Any) -> np.ndarray:
        import torch

        if self._built is None:
            self._built = self._make_policy()
        tensor = torch.from_numpy(np.ascontiguousarray(img if img.flags.writeable else img.copy()))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            out = self._built(tensor)
        out = out[0] if img.ndim == 2 else out.permute(1, 2, 0)
        return np.ascontiguousarray(out.numpy())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_built": None}  # rebuilt where it runs (DataLoader workers)


class TrivialAugmentWide(_TorchvisionPolicy):
    """torchvision's TrivialAugmentWide: one random op at a random magnitude per image."""

    def _make_policy(self) -> Any:
        from torchvision.transforms import v2

        return v2.TrivialAugmentWide(**self._policy_kwargs())


class RandAugment(_TorchvisionPolicy):
    """torchvision's RandAugment: `num_ops` random ops at a fixed `magnitude` per image."""

    class InitSchema(_TorchvisionPolicy.InitSchema):
        num_ops: int = Field(ge=1)
        magnitude: int = Field(ge=0)

    def __init__(
        self,
        num_ops: int = 2,
        magnitude: int = 9,
        num_magnitude_bins: int = 31,
        interpolation: Literal["nearest", "bilinear"] = "nearest",
        fill: tuple[int, int, int] | None = None,
        p: float = 1.0,
    ) -> None:
        super().__init__(num_magnitude_bins, interpolation, fill, p)
        if magnitude >= num_magnitude_bins:
            raise ValueError(
                f"magnitude ({magnitude}) must be below num_magnitude_bins ({num_magnitude_bins})"
            )
        self.num_ops = num_ops
        self.magnitude = magnitude

    def _make_policy(self) -> Any:
        from torchvision.transforms import v2

        return v2.RandAugment(
            num_ops=self.num_ops, magnitude=self.magnitude, **self._policy_kwargs()
        )


# visiontune's own transforms, usable by name in presets and `custom:` lists
OWN_TRANSFORMS: dict[str, type[A.BasicTransform]] = {
    "TrivialAugmentWide": TrivialAugmentWide,
    "RandAugment": RandAugment,
}

# Automatic augmentation policies (torchvision's, wrapped above) after a flip: TrivialAugmentWide
# is AutoGluon's default; RandAugment with torchvision's / timm's rand-m9 defaults (2 ops, 9/30).
PRESETS["trivialaugment"] = [
    {"HorizontalFlip": {"p": 0.5}},
    {"TrivialAugmentWide": {"fill": WHITE}},
]
PRESETS["randaugment"] = [
    {"HorizontalFlip": {"p": 0.5}},
    {"RandAugment": {"num_ops": 2, "magnitude": 9, "fill": WHITE}},
]
# The pipelines end in these; a spec naming them would apply them twice.
ADDED_BY_VISIONTUNE = {"RandomResizedCrop", "Normalize", "ToTensorV2"}


class TransformError(ValueError):
    pass


def transform_names() -> list[str]:
    return sorted(
        {
            name
            for name in dir(A)
            if isinstance(getattr(A, name), type) and issubclass(getattr(A, name), A.BasicTransform)
        }
        | set(OWN_TRANSFORMS)
    )


def _schema_message(exc: Exception) -> str:
    """One line from albumentations' pydantic ValidationError (or any other error)."""
    cause = exc.__cause__ if exc.__cause__ is not None else exc  # albumentations wraps it
    errors = getattr(cause, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            arg = ".".join(str(p) for p in err["loc"])
            parts.append(f"{arg}: {err['msg']} (got {err.get('input')!r})")
        return "; ".join(parts)
    return str(exc).replace("\n", " ")


def build_transform(name: str, args: dict[str, Any] | None) -> Any:
    """The albumentations transform `name(**args)`, or a TransformError saying what is wrong."""
    if name in ADDED_BY_VISIONTUNE:
        raise TransformError(f"{name}: visiontune adds it itself (image_size, scale_min, mean/std)")
    cls = OWN_TRANSFORMS.get(name) or getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        close = difflib.get_close_matches(name, transform_names(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TransformError(f"{name}: not an albumentations transform{hint}")
    args = dict(args or {})
    accepted = [
        p
        for p, spec in inspect.signature(cls.__init__).parameters.items()
        if p not in ("self", "always_apply") and spec.kind is not spec.VAR_KEYWORD
    ]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise TransformError(
            f"{name}: unknown argument(s) {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    try:
        return cls(**args)
    except Exception as exc:  # albumentations validates with pydantic; others raise plainly
        raise TransformError(f"{name}: {_schema_message(exc)}") from exc


def parse_spec(index: int, spec: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise TransformError(
            f"item {index}: write each transform as a one-key mapping, e.g. "
            "`- HorizontalFlip: {p: 0.5}`"
        )
    name, args = next(iter(spec.items()))
    if args is not None and not isinstance(args, dict):
        raise TransformError(f"item {index} ({name}): arguments must be a mapping, got {args!r}")
    return str(name), args or {}


def build_transforms(specs: list[Any]) -> list[Any]:
    """Transforms for a list of specs; errors name the item (0-based) and the transform."""
    built = []
    for index, spec in enumerate(specs):
        name, args = parse_spec(index, spec)
        try:
            built.append(build_transform(name, args))
        except TransformError as exc:
            raise TransformError(f"item {index}: {exc}") from None
    return built


def check_custom(specs: list[Any], source: Path) -> str | None:
    """The one-line error for `custom:` in `source` (params/augment.yaml) if a spec would not
    build, in the form of the params loader's other errors; None when all build."""
    try:
        build_transforms(specs)
    except TransformError as exc:
        return f"{source}: custom: {exc} (got {specs!r})"
    return None
