"""Commands about models: the zoo (models), and using a trained one: predict, export, lr-find,
crossval."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from flows.cli_common import console, current_project, err, fail, validated, writes_project
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
    target: Path = typer.Argument(
        ...,
        help="an image file, a folder of images (recursive), or a CSV/parquet manifest with "
        "`path` and `label` or `labels` columns (its images are scored against their labels)",
    ),
    top_k: int = typer.Option(3, "--top-k", min=1, help="classes listed per image"),
    model: Path | None = typer.Option(
        None,
        help="a model.pt (default artifacts/train/model.pt, or a registry version) or an "
        "exported .onnx / .ts file",
    ),
    csv: Path | None = typer.Option(
        None, help="where to write the CSV (default artifacts/predict/predictions.csv)"
    ),
    threshold: float | None = typer.Option(
        None,
        min=0,
        max=1,
        help="multi-label models: one probability cut for every label, instead of the "
        "per-label thresholds chosen on the validation split",
    ),
) -> None:
    """Classify images with the trained model: print a table and write a CSV."""
    from rich.progress import Progress

    from tasks.files import write_csv
    from tasks.inference import ModelFormatError
    from tasks.predict import Listing, list_images, predict_images, read_manifest

    project = current_project()
    model_pt = _model_file(project, model)
    truth = None
    try:
        if target.suffix.lower() in (".csv", ".parquet") and target.is_file():
            manifest = read_manifest(target)
            listing, truth = Listing(manifest.images, []), manifest.truth
        else:
            listing = list_images(target)
    except (FileNotFoundError, ValueError) as exc:
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
        try:
            frame = predict_images(
                model_pt,
                paths,
                top_k=top_k,
                batch_size=BATCH,
                on_batch=lambda n: progress.advance(task, n),
                root=None if truth is not None else target if target.is_dir() else target.parent,
                threshold=threshold,
            )
        except ModelFormatError as exc:
            fail(str(exc), 1)
    out = csv or project.artifacts("predict") / "predictions.csv"
    write_csv(frame, out)
    console.print(_table(frame, target, top_k, model_pt.name))
    if len(frame) > MAX_ROWS:
        console.print(f"… {len(frame) - MAX_ROWS} more row(s) in the CSV")
    column = "predicted" if "predicted" in frame else "labels"
    if column == "labels":
        counts = frame[column].str.split().explode().dropna().value_counts()
    else:
        counts = frame[column].value_counts() if column in frame else None
    if counts is not None and len(counts):
        console.print(f"{column}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    failed = int((frame["error"] != "").sum())
    errors = f", {failed} unreadable (see the error column)" if failed else ""
    console.print(f"{len(frame)} image(s){errors}; CSV: {out}")
    if truth is not None:
        from tasks.inference import class_labels
        from tasks.label_task import task_named
        from tasks.runtime import open_model

        meta = open_model(model_pt).meta
        ok = (frame["error"] == "").to_numpy()
        known = [t for t, good in zip(truth, ok, strict=True) if good]
        if known:
            cut = threshold if threshold is not None else meta.get("thresholds")
            line = task_named(meta.get("task")).score(frame[ok], known, class_labels(meta), cut)
            console.print(f"{line} on the {len(known)} image(s) of {target.name}")
        return
    scored = frame[(frame["actual"] != "") & (frame["error"] == "")] if "actual" in frame else []
    if len(scored):
        wrong = int((scored["predicted"] != scored["actual"]).sum())
        console.print(
            f"accuracy {1 - wrong / len(scored):.3f} on the {len(scored)} image(s) in a folder "
            f"named after a class ({wrong} wrong; the CSV's `actual` column)"
        )


def _table(frame, target: Path, top_k: int, model_name: str) -> Table:
    """The first MAX_ROWS predictions: the class and the top k, or the predicted set."""
    table = Table(title=f"predictions ({model_name})")
    multi = "labels" in frame.columns
    columns = ("image", "labels") if multi else ("image", "predicted", "confidence", f"top {top_k}")
    for column in columns:
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for row in frame.head(MAX_ROWS).to_dict(orient="records"):
        shown = _shown(Path(row["path"]), target)
        if row.get("error"):
            error = ("", row["error"]) if not multi else ()
            table.add_row(shown, "[red]error[/red]" + (f" {row['error']}" if multi else ""), *error)
            continue
        if multi:
            table.add_row(shown, row["labels"] or "(none)")
            continue
        tops = ", ".join(
            f"{row[f'top{i}']} {row[f'p{i}']:.2f}" for i in range(1, top_k + 1) if f"top{i}" in row
        )
        table.add_row(shown, row["predicted"], f"{row['confidence']:.3f}", tops)
    return table


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


class Quantize(StrEnum):
    int8 = "int8"
    fp16 = "fp16"


@model_app.command()
@writes_project
def export(
    format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx or torchscript"),
    model: Path | None = typer.Option(None, help="model file (default artifacts/train/model.pt)"),
    out: Path | None = typer.Option(None, help="output file (default artifacts/export/model.*)"),
    pixels: bool = typer.Option(
        True,
        "--pixels/--float-input",
        help="the graph takes uint8 RGB pixels (N, H, W, 3) and normalises them itself, or a "
        "normalised float batch (N, 3, H, W)",
    ),
    quantize: Quantize | None = typer.Option(
        None,
        help="also write model.int8.onnx (static INT8, for CPUs) or model.fp16.onnx (for GPUs), "
        "kept only if it passes the accuracy gate on the test split (ONNX only)",
    ),
    calibration: int = typer.Option(300, min=1, help="train images that calibrate INT8"),
    min_agreement: float = typer.Option(
        99.0, min=0.0, help="gate: % of test images whose top-1 must match the PyTorch model's"
    ),
    max_drop: float = typer.Option(
        1.0, min=0.0, help="gate: accuracy points the quantized file may lose"
    ),
    atol: float = typer.Option(1e-4, help="largest |logit difference| the parity check accepts"),
) -> None:
    """Export the model to ONNX or TorchScript, checked against the PyTorch model; optionally
    an INT8 or fp16 ONNX file behind an accuracy gate."""
    from flows.export import ExportDataError, export_flow
    from tasks.export import ExportParityError
    from tasks.inference import ModelFormatError
    from tasks.quantize import GateError

    project = current_project()
    model_pt = _model_file(project, model)
    if quantize is not None and format is not ExportFormat.onnx:
        fail("--quantize needs --format onnx (INT8 and fp16 are ONNX files)")
    try:
        result = export_flow(
            str(model_pt),
            format.value,
            str(out) if out else None,
            atol,
            str(project.root),
            pixels=pixels,
            quantize=quantize.value if quantize else None,
            calibration=calibration,
            min_agreement=min_agreement / 100,
            max_drop=max_drop / 100,
        )
    except (ExportParityError, GateError, ExportDataError, ModelFormatError) as exc:
        fail(str(exc), 1)
    meta, size, parity = result.meta, result.meta["image_size"], result.parity
    console.print(
        f"exported {result.path} ({format.value}, {_mb(result.path)}); parity on "
        f"{parity.n_inputs} images: max |Δlogit| {parity.max_abs_diff:.2e} ≤ {atol:.0e}, "
        "same top-1 for all"
    )
    shape = (
        f"uint8 RGB pixels (N, {size}, {size}, 3), resized as the metadata's `resize` says"
        if pixels
        else f"float32 (N, 3, {size}, {size}), RGB, normalised with mean {meta['mean']} and "
        f"std {meta['std']}"
    )
    console.print(f"input: {shape}; outputs: logits, probabilities; classes {meta['classes']}")
    if result.quantized is not None and result.gate is not None:
        ratio = result.quantized.stat().st_size / result.path.stat().st_size
        console.print(
            f"{quantize}: {result.quantized} ({_mb(result.quantized)}, {ratio:.2f}× the fp32 "
            f"file); {result.gate.describe()}"  # type: ignore[attr-defined]
        )


def _mb(path: Path) -> str:
    return f"{path.stat().st_size / 1e6:.1f} MB"


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
@writes_project
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
@writes_project
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
