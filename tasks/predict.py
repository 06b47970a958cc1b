"""Predictions from a model.pt alone: raw image → the clean stage's decoding → eval pipeline → net.

The model file carries the class names, the serialized eval pipeline and the
clean params it was trained with, so no project params are needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import nn

from params import CleanParams
from tasks.clean import prepare
from tasks.decode import RejectedImage, decode
from tasks.train import load_model


def list_images(target: Path) -> list[Path]:
    """`target` itself if it is a file, else every image file under the folder (sorted)."""
    if target.is_file():
        return [target]
    if not target.is_dir():
        raise FileNotFoundError(f"{target} is neither an image file nor a folder")
    known = {ext.lower() for ext in Image.registered_extensions()}
    return sorted(
        p
        for p in target.rglob("*")
        if p.is_file() and p.suffix.lower() in known and not p.name.startswith(".")
    )


@dataclass
class Predictor:
    net: nn.Module
    classes: list[str]
    pipeline: A.Compose
    clean: CleanParams
    device: torch.device

    @classmethod
    def load(cls, model_pt: Path, device: str = "cpu") -> Predictor:
        net, meta = load_model(model_pt, device)
        return cls(
            net=net,
            classes=list(meta["classes"]),
            pipeline=A.from_dict(json.loads(meta["eval_pipeline"])),
            clean=CleanParams.model_validate_json(meta["clean"]),
            device=torch.device(device),
        )

    def tensor(self, path: Path) -> torch.Tensor:
        """One image as the model's input tensor (CHW), decoded exactly as in training."""
        decoded = decode(path.read_bytes(), self.clean.background, self.clean.max_pixels)
        image = prepare(decoded, self.clean.max_side)
        return self.pipeline(image=np.asarray(image))["image"]

    @torch.no_grad()
    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        self.net.eval()
        return torch.softmax(self.net(batch.to(self.device)).float(), 1).cpu()

    def predict(self, paths: list[Path], top_k: int = 3, batch_size: int = 32) -> pd.DataFrame:
        """One row per image: predicted class, confidence and the top-k; unreadable → `error`."""
        k = max(1, min(top_k, len(self.classes)))
        rows: list[dict] = []
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            tensors, ok = [], []
            for path in chunk:
                try:
                    tensors.append(self.tensor(path))
                    ok.append(path)
                except (RejectedImage, OSError) as exc:
                    rows.append({"path": str(path), "error": str(exc)})
            if not tensors:
                continue
            probs = self.probabilities(torch.stack(tensors))
            top = probs.topk(k, dim=1)
            for path, values, indices in zip(ok, top.values, top.indices, strict=True):
                row: dict = {
                    "path": str(path),
                    "predicted": self.classes[int(indices[0])],
                    "confidence": round(float(values[0]), 4),
                }
                for rank, (v, i) in enumerate(zip(values, indices, strict=True), start=1):
                    row[f"top{rank}"] = self.classes[int(i)]
                    row[f"p{rank}"] = round(float(v), 4)
                rows.append(row | {"error": ""})
        order = {str(p): i for i, p in enumerate(paths)}
        frame = pd.DataFrame(rows)
        return frame.sort_values("path", key=lambda s: s.map(order)).reset_index(drop=True)
