"""`visiontune export` as a flow: ONNX/TorchScript export checked on real test images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from prefect import flow

from flows.naming import stage_run_name
from flows.project import Project
from tasks.export import SUFFIX, Format, Parity, export_model
from tasks.inference import LoadedModel


def parity_inputs(project: Project, model: LoadedModel) -> torch.Tensor:
    """Up to 16 test images from the clean cache, preprocessed as the model was trained;
    random ones outside a project."""
    split = project.artifacts("split") / "split.parquet"
    if split.is_file():
        frame = pd.read_parquet(split)
        rows = frame[frame["split"] == "test"].head(16)
        if not rows.empty:
            dataset = model.cached(rows, project.artifacts("clean"))
            return torch.stack([dataset[i][0] for i in range(len(dataset))])
    size = model.meta["image_size"]
    return torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))


@flow(name="export", flow_run_name=stage_run_name("export"), log_prints=True)
def export_flow(
    model: str, fmt: Format = "onnx", out: str | None = None, atol: float = 1e-4, root: str = "."
) -> tuple[Path, Parity, dict]:
    """The exported file, its parity with the PyTorch model, and the model's metadata."""
    project = Project(Path(root))
    loaded = LoadedModel.load(Path(model))
    dest = Path(out) if out else project.artifacts("export") / f"model{SUFFIX[fmt]}"
    inputs = parity_inputs(project, loaded)
    parity = export_model(loaded.net, loaded.meta, fmt, dest, inputs, atol=atol)
    meta = {k: v for k, v in loaded.meta.items() if k != "state_dict"}
    return dest, parity, meta
