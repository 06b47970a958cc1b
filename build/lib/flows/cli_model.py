"""Commands about models: the zoo (models), and using a trained one: predict, export, lr-find,
crossval."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from flows.cli_common import console, current_project, err, fail, validated
from flows.project import Project

model_app = typer.Typer()


def _model_file(project: Project, model: Path | None) -> Path:
    from tasks.train import MODEL

    path = model or project.artifacts("train") / MODEL
    if not path.is_file():
        fail(f"no model at {path}: run `visiontune run` first or pass --model", 1)
    return path


@model_app.command()
def predict(
    target: Path = typer.Argument(..., help="an image file or a folder of images (recursive)"),
    top_k: int = typer.Option(3, "--top-k", min=1, help="classes listed per image"),
    model: Path | None = typer.Option(None, help="model file (default artifacts/train/model.pt)"),
    csv: Path | None = typer.Option(
        None, help="where to write the CSV (default artifacts/predict/predictions.csv)"
    ),
) -> None:
    """Classify images with the trained model: print a table and write a CSV."""
    from rich.progress import Progress

    from tasks.files import write_csv
    from tasks.predict import list_images, predict_images

    project = current_project()
    model_pt = _model_file(project, model)
    try:
        listing = list_images(target)
    except FileNotFoundError as exc:
        fail(str(exc))
    paths = listing.images
    if listing.skipped:
        names = ", ".join(_shown(p, target) for p in listing.skipped[:3])
        more = f", … ({len(listing.skipped)} in all)" if len(listing.skipped) > 3 else ""
        err.print(f"skipped (not an image file by its extension): {names}{more}", highlight=False)
    if not paths:
        fail(f"no image files under {target}")
    with Progress(console=err, transient=True, disable=len(paths) <= BATCH) as progress:
        task = progress.add_task("predict", total=len(paths))
        frame = predict_images(
            model_pt,
            paths,
            top_k=top_k,
            batch_size=BATCH,
            on_batch=lambda n: progress.advance(task, n),
            root=target if target.is_dir() else target.parent,
        )
    out = csv or project.artifacts("predict") / "predictions.csv"
    write_csv(frame, out)
    table = Table(title=f"predictions ({model_pt.name})")
    for column in ("image", "predicted", "confidence", f"top {top_k}"):
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for row in frame.head(MAX_ROWS).to_dict(orient="records"):
        shown = _shown(Path(row["path"]), target)
        if row.get("error"):
            table.add_row(shown, "[red]error[/red]", "", row["error"])
            continue
        tops = ", ".join(
            f"{row[f'top{i}']} {row[f'p{i}']:.2f}" for i in range(1, top_k + 1) if f"top{i}" in row
        )
        table.add_row(shown, row["predicted"], f"{row['confidence']:.3f}", tops)
    console.print(table)
    if len(frame) > MAX_ROWS:
        console.print(f"… {len(frame) - MAX_ROWS} more row(s) in the CSV")
    counts = frame["predicted"].value_counts() if "predicted" in frame else None
    if counts is not None and len(counts):
        console.print("predicted: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    failed = int((frame["error"] != "").sum())
    errors = f", {failed} unreadable (see the error column)" if failed else ""
    console.print(f"{len(frame)} image(s){errors}; CSV: {out}")
    scored = frame[(frame["actual"] != "") & (frame["error"] == "")] if "actual" in frame else []
    if len(scored):
        wrong = int((scored["predicted"] != scored["actual"]).sum())
        console.print(
            f"accuracy {1 - wrong / len(scored):.3f} on the {len(scored)} image(s) in a folder "
            f"named after a class ({wrong} wrong; the CSV's `actual` column)"
        )


BATCH = 32  # images decoded and scored at once
MAX_ROWS = 50  # rows of the printed table; the CSV has them all


def _shown(path: Path, target: Path) -> str:
    """A path as the user would recognise it: relative to the folder they named."""
    return (
        str(path.relative_to(target))
        if path.is_relative_to(target) and path != target
        else path.name
    )


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"


@model_app.command()
def export(
    format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx or torchscript"),
    model: Path | None = typer.Option(None, help="model file (default artifacts/train/model.pt)"),
    out: Path | None = typer.Option(None, help="output file (default artifacts/export/model.*)"),
    atol: float = typer.Option(1e-4, help="largest |logit difference| the parity check accepts"),
) -> None:
    """Export the model to ONNX or TorchScript and check it gives the same outputs."""
    from flows.export import export_flow
    from tasks.export import ExportParityError

    project = current_project()
    model_pt = _model_file(project, model)
    try:
        dest, parity, meta = export_flow(
            str(model_pt), format.value, str(out) if out else None, atol, str(project.root)
        )
    except ExportParityError as exc:
        fail(str(exc), 1)
    console.print(
        f"exported {dest} ({format.value}); parity on {parity.n_inputs} inputs: max |Δlogit| "
        f"{parity.max_abs_diff:.2e} ≤ {atol:.0e}, same top-1 for all"
    )
    console.print(
        f"input: float32 (N, 3, {meta['image_size']}, {meta['image_size']}), RGB, "
        f"normalised with mean {meta['mean']} and std {meta['std']}; classes {meta['classes']}"
    )


@model_app.command()
def models(
    name: str | None = typer.Argument(None, help="one model: its preprocessing and availability"),
) -> None:
    """The models `train.yaml: model` can name: offline here (installed, cached) and online."""
    from tasks.model import ModelError, data_config
    from tasks.zoo import offline_models, online_models, timm_pretrained_count

    offline = offline_models()
    if name:
        try:
            config = data_config(name)
        except ModelError as exc:
            fail(str(exc))
        here = next((e for e in offline if e.model == name), None)
        console.print(
            f"{name}: weights trained at {config.input_size} px (crop {config.crop_pct:g}, "
            f"{config.interpolation}); mean {list(config.mean)}, std {list(config.std)}; "
            + (f"offline ({here.source})" if here else "not on this machine: fetched when online")
        )
        return
    for title, entries in (
        ("offline: weights on this machine", offline),
        ("online: fetched once, then cached", online_models()),
    ):
        table = Table(title=title)
        for column in ("model", "source", "input px", "note"):
            table.add_column(column)
        for e in entries:
            table.add_row(e.model, e.source, str(e.input_size or ""), e.note)
        console.print(table)
    console.print(
        f"Any timm model works as timm/<name> ({timm_pretrained_count()} pretrained tags, "
        "`timm.list_pretrained()`), any timm model on the Hub as hf-hub:<org>/<repo>, any "
        "torchvision classification model by name; weights: path/to/*.safetensors|*.pt loads "
        "local weights into any of them. HF_HUB_OFFLINE=1 uses the Hugging Face cache only."
    )


@model_app.command("lr-find")
def lr_find(
    start: float = typer.Option(1e-7, help="first LR of the sweep"),
    end: float = typer.Option(10.0, help="last LR of the sweep"),
    steps: int = typer.Option(100, min=10, help="training steps (batches)"),
) -> None:
    """LR range test on the train split: plot + suggested `lr` for params/train.yaml."""
    from flows.lr_find import lr_find_flow

    project = current_project()
    validated(project)
    params = project.params("train")
    with console.status(f"LR range test ({steps} steps)…"):
        result = lr_find_flow(params, str(project.root), start, end, steps)  # type: ignore[arg-type]
    png = project.artifacts("lr_find") / "lr_find.png"
    console.print(
        f"steepest descent at {result.steepest:.2e}, loss minimum / 10 at "
        f"{result.min_over_10:.2e}\n[bold]suggested lr: {result.suggestion:.2e}[/bold] "
        f"(params/train.yaml has {params.lr:g}); plot: {png}"  # type: ignore[attr-defined]
    )


@model_app.command()
def crossval() -> None:
    """k-fold cross-validation on the split's folds: mean ± std, fold ensemble, label issues."""
    from flows.crossval import crossval_flow
    from tasks.crossval import CrossvalError, describe

    project = current_project()
    validated(project)
    cv_params = project.params("crossval")
    try:
        summary = crossval_flow(cv_params, project.params("train"), str(project.root))  # type: ignore[arg-type]
    except CrossvalError as exc:
        fail(str(exc))
    console.print(f"[bold]cross-validation ({summary['folds']} folds, held-out images)[/bold]")
    for line in describe(summary, summary.get("ensemble") or {}):
        console.print(f"  {line}")
    console.print(f"label issues: {project.artifacts('crossval') / 'label_issues.csv'}")
