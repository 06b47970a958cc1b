"""`visiontune lr-find` as a flow: the LR range test on the train split, its files and plot."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.inputs import train_data
from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_image
from params import TrainParams
from tasks.files import write_csv, write_json
from tasks.lr_find import LRFind, lr_range_test, plot_lr_find


@flow(name="lr-find", flow_run_name=stage_run_name("lr-find"), log_prints=True)
def lr_find_flow(
    params: TrainParams, root: str = ".", start: float = 1e-7, end: float = 10.0, steps: int = 100
) -> LRFind:
    """Writes artifacts/lr_find/: the curve (CSV), the suggestion (JSON) and the plot (PNG)."""
    project = Project(Path(root))
    out = project.artifacts("lr_find")
    data = train_data(project)
    params = data.task.recipe(params)  # multi-label data: train.yaml's `multi_label:` values
    result = lr_range_test(params, data, start, end, steps)
    write_csv(result.curve, out / "lr_find.csv")
    write_json(
        {
            "suggestion": result.suggestion,
            "steepest": result.steepest,
            "min_over_10": result.min_over_10,
            "current_lr": params.lr,
        },
        out / "lr_find.json",
    )
    plot_lr_find(result, out / "lr_find.png")
    publish_image("lr-find", out / "lr_find.png", "LR range test")
    return result
