"""`visiontune export` as a flow: ONNX/TorchScript export checked on real test images."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import flow

from flows.naming import stage_run_name
from flows.project import Project
from tasks.export import SUFFIX, Format, Parity, export_model
from tasks.train import load_model


def parity_inputs(project: Project, meta: dict) -> torch.Tensor:
    """Up to 16 test images preprocessed as in evaluation; random ones outside a project."""
    split = project.artifacts("split") / "split.parquet"
    if split.is_file() and (project.artifacts("augment") / "eval.yaml").is_file():
        from flows.inputs import train_data
        from tasks.dataset import CachedImages

        data = train_data(project, image_size=meta["image_size"])
        rows = data.part("test").head(16)
        if not rows.empty:
            dataset = CachedImages(rows, data.clean_dir, data.eval_pipeline, meta["classes"])
            return torch.stack([dataset[i][0] for i in range(len(dataset))])
    size = meta["image_size"]
    return torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))


@flow(name="export", flow_run_name=stage_run_name("export"), log_prints=True)
def export_flow(
    model: str, fmt: Format = "onnx", out: str | None = None, atol: float = 1e-4, root: str = "."
) -> tuple[Path, Parity, dict]:
    """The exported file, its parity with the PyTorch model, and the model's metadata."""
    project = Project(Path(root))
    net, meta = load_model(Path(model))
    dest = Path(out) if out else project.artifacts("export") / f"model{SUFFIX[fmt]}"
    parity = export_model(net, meta, fmt, dest, parity_inputs(project, meta), atol=atol)
    meta = {k: v for k, v in meta.items() if k != "state_dict"}
    return dest, parity, meta
