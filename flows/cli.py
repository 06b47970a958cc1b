"""The `visiontune` command line. Heavy imports stay inside commands so --help is instant."""

from __future__ import annotations

import json
import sys
from enum import Enum, StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from flows.environment import configure
from flows.project import STAGES, Project
from params import ParamsError

app = typer.Typer(
    help="Fine-tune pretrained image classifiers on your labelled images: "
    "a Prefect + DVC pipeline (collect → clean → split → augment → tune → train → evaluate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
collect_app = typer.Typer(help="Bring labelled images into data/ and version them (dvc add).")
server_app = typer.Typer(help="The project-local Prefect server (127.0.0.1) and its UI.")
app.add_typer(collect_app, name="collect")
app.add_typer(server_app, name="server")
console = Console()
err = Console(stderr=True)

StageName = Enum("StageName", {s: s for s in STAGES}, type=str)  # type: ignore[misc]


def _project() -> Project:
    return Project.find()


@app.callback()
def _setup() -> None:
    """Runs before every command, before prefect is imported (it reads settings at import)."""
    configure(Project.find())


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _print_metrics(project: Project) -> None:
    path = project.artifacts("evaluate") / "metrics.json"
    if not path.is_file():
        return
    metrics = json.loads(path.read_text())
    table = Table(title=f"test metrics ({path.relative_to(project.root)})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(table)


def _print_ui(project: Project) -> None:
    from flows.server import running_server

    server = running_server(project)
    if server:
        console.print(f"Prefect UI: [bold]{server.ui_url}[/bold]")


def _print_collect(result: dict) -> None:
    console.print(
        f"data/: {result['new']} new, {result['changed']} changed, "
        f"{result['unchanged']} unchanged, {len(result['refused'])} refused"
        + (f"; data.dvc now at {result['data_version']}" if result["data_version"] else "")
    )
    if result["refused"]:
        table = Table(title="refused (not collected)")
        for column in ("source", "reason", "detail"):
            table.add_column(column, overflow="fold")
        for r in result["refused"]:
            table.add_row(r["source"], r["reason"], r["detail"])
        console.print(table)
    changes = result["since_last"]
    if changes is not None:
        images = {kind: [p for p in paths if "/" in p] for kind, paths in changes.items()}
        console.print(
            f"since the last version ({result['previous_version'] or 'none'}): "
            f"{len(images['added'])} added, {len(images['modified'])} modified, "
            f"{len(images['deleted'])} deleted image(s)"
        )
        if result["by_class"]:
            table = Table(title="changes per class")
            for column in ("class", "added", "modified", "deleted"):
                table.add_column(column, justify="left" if column == "class" else "right")
            for row in result["by_class"]:
                table.add_row(*(str(row[c]) for c in ("class", "added", "modified", "deleted")))
            console.print(table)
    elif result["data_version"]:
        console.print("the previous version is not in the local DVC cache: no file-level diff")


def _collect(source: str, location: str = "", **options) -> None:
    from flows.collect import run_collect
    from tasks.sources import SourceError

    project = _project()
    try:
        result = run_collect(source, location, str(project.root), **options)  # type: ignore[arg-type]
    except SourceError as exc:
        _fail(str(exc))
    _print_collect(result)


def _limits(timeout: float, max_mb: float, retries: int, backoff: float, workers: int):
    from tasks.download import DownloadLimits

    return DownloadLimits(
        timeout=timeout,
        max_bytes=int(max_mb * 2**20),
        retries=retries,
        backoff=backoff,
        workers=workers,
    )


TIMEOUT = typer.Option(30.0, min=0.1, help="seconds allowed for one download attempt")
MAX_MB = typer.Option(50.0, min=0.001, help="largest download accepted, in MiB")
RETRIES = typer.Option(3, min=0, help="retries of a timed-out or 5xx download")
BACKOFF = typer.Option(1.0, min=0.0, help="seconds before the first retry (doubled each time)")
WORKERS = typer.Option(8, min=1, help="downloads in flight at once")


@collect_app.command("demo")
def collect_demo(
    per_class: int = typer.Option(120, min=1, help="images per class (demo categories)"),
) -> None:
    """The offline demo set: Noto emoji PNGs (npm emoji-datasource-google), label = category."""
    _collect("demo", per_class=per_class)


@collect_app.command("folder")
def collect_folder(
    path: Path = typer.Argument(..., help="an ImageFolder tree: PATH/<label>/<image>"),
) -> None:
    """Copy an ImageFolder tree (one sub-folder per label) into data/."""
    if not path.is_dir():
        _fail(f"{path} is not a folder")
    _collect("folder", str(path.resolve()))


@collect_app.command("manifest")
def collect_manifest(
    file: Path = typer.Argument(..., help="CSV or parquet: label + path and/or url (+ extras)"),
    timeout: float = TIMEOUT,
    max_mb: float = MAX_MB,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    workers: int = WORKERS,
) -> None:
    """Collect the rows of a manifest; relative paths resolve against the manifest's folder.

    Paths that leave that folder (../, absolute, symlinks) are refused; URLs are
    downloaded safely. Other columns (e.g. `group`) are kept in data/sources.csv.
    """
    _collect(
        "manifest",
        str(file.resolve()),
        limits=_limits(timeout, max_mb, retries, backoff, workers),
    )


@collect_app.command("urls")
def collect_urls(
    file: Path = typer.Argument(..., help="a text file of 'URL [LABEL]' lines"),
    label: str = typer.Option("", help="label for lines that carry none"),
    timeout: float = TIMEOUT,
    max_mb: float = MAX_MB,
    retries: int = RETRIES,
    backoff: float = BACKOFF,
    workers: int = WORKERS,
) -> None:
    """Download a list of image URLs (http/https only) into data/<label>/."""
    _collect(
        "urls",
        str(file.resolve()),
        label=label,
        limits=_limits(timeout, max_mb, retries, backoff, workers),
    )


def _validated(project: Project) -> None:
    try:
        project.validate_all()
    except ParamsError as exc:
        _fail(str(exc))


@app.command()
def stage(name: StageName = typer.Argument(..., help="the stage to run")) -> None:  # type: ignore[valid-type]
    """Run one stage's flow now (the cmd of each dvc.yaml stage; `dvc repro` calls this)."""
    from flows.pipeline import run_stage
    from tasks.distributed import launched_command, ranks

    project = _project()
    _validated(project)
    if name.value == "train" and (command := launched_command([sys.argv[0], "stage", "train"])):
        import subprocess

        console.print(f"launching: {' '.join(command)}")
        raise typer.Exit(subprocess.run(command).returncode)  # $VISIONTUNE_LAUNCHER, e.g. torchrun
    if name.value == "train" and not ranks().is_main:  # torchrun: only rank 0 runs the flow
        from flows.train import train_worker

        train_worker(project.params("train"), str(project.root))  # type: ignore[arg-type]
        return
    run_stage(project, name.value)


@app.command()
def run(
    force: bool = typer.Option(False, help="run every stage even if DVC says it is up to date"),
    until: StageName | None = typer.Option(  # type: ignore[valid-type]
        None, help="stop after this stage (run only it and the stages it needs)"
    ),
) -> None:
    """Run the stale stages of dvc.yaml as one Prefect flow and record them in dvc.lock.

    When DVC finds nothing stale, no flow run is started (like `dvc repro`).
    """
    from flows.dag import stale_stages

    project = _project()
    _validated(project)
    if not project.data.is_dir():
        _fail(f"{project.data} does not exist: bring images in with `visiontune collect` first")
    stop_at = until.value if until else None
    if not force and not stale_stages(project.root, stop_at):
        console.print("Everything is up to date.")
        _print_metrics(project)
        return
    from flows.pipeline import pipeline_flow

    result = pipeline_flow(str(project.root), force=force, until=stop_at)
    if result["ran"]:
        table = Table(title="stages run")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        for name, seconds in result["seconds"].items():
            table.add_row(name, f"{seconds:.1f}")
        console.print(table)
    else:
        console.print("Everything is up to date.")
    _print_metrics(project)
    _print_ui(project)


@app.command()
def metrics() -> None:
    """Print the last evaluation's test metrics."""
    project = _project()
    if not (project.artifacts("evaluate") / "metrics.json").is_file():
        _fail("no metrics yet: run `visiontune run` first", 1)
    _print_metrics(project)


@app.command("check-params")
def check_params() -> None:
    """Validate every params/*.yaml against the schema without running anything."""
    project = _project()
    _validated(project)
    console.print(f"params OK: {', '.join(str(project.params_file(s).name) for s in STAGES)}")


@app.command()
def tune(
    worker: bool = typer.Option(
        False, help="only pull trials of the shared study until the budget is met"
    ),
) -> None:
    """Run the Optuna search (and any stale stage before it); a killed search resumes."""
    from flows.pipeline import pipeline_flow

    project = _project()
    _validated(project)
    if worker:
        from flows.tune import tune_worker_flow

        result = tune_worker_flow(
            project.params("tune"), project.params("train"), str(project.root)
        )
        console.print(f"{result.get('trials_run', 0)} trial(s) run by this worker")
        return
    pipeline_flow(str(project.root), until="tune")
    best = project.artifacts("tune") / "best_params.yaml"
    if best.is_file():
        console.print(f"[bold]{best.relative_to(project.root)}[/bold]\n" + best.read_text())
    _print_ui(project)


@app.command()
def retrain() -> None:
    """Collect (params/retrain.yaml), retrain if data changed, promote only a better model."""
    from flows.retrain import retrain_flow

    project = _project()
    _validated(project)
    try:
        params = project.params("retrain")
    except ParamsError as exc:
        _fail(str(exc))
    result = retrain_flow(params, str(project.root))
    console.print(result.get("reason") or result["decision"])
    _print_ui(project)


@app.command()
def serve(
    cron: str = typer.Option("0 3 * * *", help="when to retrain (cron, UTC)"),
    name: str = typer.Option("scheduled-retrain", help="the retrain deployment's name"),
) -> None:
    """Serve scheduled retraining (and an on-demand pipeline) from this machine; Ctrl-C stops."""
    from prefect import serve as prefect_serve

    from flows.pipeline import pipeline_flow
    from flows.retrain import retrain_flow

    project = _project()
    _validated(project)
    root = {"root": str(project.root)}
    console.print(f"serving 'retrain/{name}' on cron '{cron}' and 'pipeline/on-demand'")
    prefect_serve(
        retrain_flow.to_deployment(name=name, cron=cron, parameters=root),
        pipeline_flow.to_deployment(name="on-demand", parameters=root),
    )


def _model_file(project: Project, model: Path | None) -> Path:
    from tasks.train import MODEL

    path = model or project.artifacts("train") / MODEL
    if not path.is_file():
        _fail(f"no model at {path}: run `visiontune run` first or pass --model", 1)
    return path


@app.command()
def predict(
    target: Path = typer.Argument(..., help="an image file or a folder of images (recursive)"),
    top_k: int = typer.Option(3, "--top-k", min=1, help="classes listed per image"),
    model: Path | None = typer.Option(None, help="model file (default artifacts/train/model.pt)"),
    csv: Path | None = typer.Option(
        None, help="where to write the CSV (default artifacts/predict/predictions.csv)"
    ),
) -> None:
    """Classify images with the trained model: print a table and write a CSV."""
    from tasks.files import write_csv
    from tasks.predict import Predictor, list_images

    project = _project()
    model_pt = _model_file(project, model)
    try:
        paths = list_images(target)
    except FileNotFoundError as exc:
        _fail(str(exc))
    if not paths:
        _fail(f"no image files under {target}")
    frame = Predictor.load(model_pt).predict(paths, top_k=top_k)
    out = csv or project.artifacts("predict") / "predictions.csv"
    write_csv(frame, out)
    table = Table(title=f"predictions ({model_pt.name})")
    for column in ("image", "predicted", "confidence", f"top {top_k}"):
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for row in frame.to_dict(orient="records"):
        if row.get("error"):
            table.add_row(Path(row["path"]).name, "[red]error[/red]", "", row["error"])
            continue
        tops = ", ".join(
            f"{row[f'top{i}']} {row[f'p{i}']:.2f}" for i in range(1, top_k + 1) if f"top{i}" in row
        )
        table.add_row(Path(row["path"]).name, row["predicted"], f"{row['confidence']:.3f}", tops)
    console.print(table)
    console.print(f"{len(frame)} image(s); CSV: {out}")


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"


@app.command()
def export(
    format: ExportFormat = typer.Option(ExportFormat.onnx, "--format", help="onnx or torchscript"),
    model: Path | None = typer.Option(None, help="model file (default artifacts/train/model.pt)"),
    out: Path | None = typer.Option(None, help="output file (default artifacts/export/model.*)"),
    atol: float = typer.Option(1e-4, help="largest |logit difference| the parity check accepts"),
) -> None:
    """Export the model to ONNX or TorchScript and check it gives the same outputs."""
    import torch

    from tasks.export import SUFFIX, ExportParityError, export_model
    from tasks.train import load_model

    project = _project()
    model_pt = _model_file(project, model)
    net, meta = load_model(model_pt)
    inputs = _parity_inputs(project, meta)
    if inputs is None:
        size = meta["image_size"]
        inputs = torch.randn(8, 3, size, size, generator=torch.Generator().manual_seed(0))
    dest = out or project.artifacts("export") / f"model{SUFFIX[format.value]}"
    try:
        parity = export_model(net, meta, format.value, dest, inputs, atol=atol)
    except ExportParityError as exc:
        _fail(str(exc), 1)
    console.print(
        f"exported {dest} ({format.value}); parity on {parity.n_inputs} inputs: max |Δlogit| "
        f"{parity.max_abs_diff:.2e} ≤ {atol:.0e}, same top-1 for all"
    )
    console.print(
        f"input: float32 (N, 3, {meta['image_size']}, {meta['image_size']}), RGB, "
        f"normalised with mean {meta['mean']} and std {meta['std']}; classes {meta['classes']}"
    )


def _parity_inputs(project: Project, meta: dict):
    """Up to 16 real test images, preprocessed as in evaluation (None outside a project)."""
    import torch

    split = project.artifacts("split") / "split.parquet"
    if not split.is_file() or not (project.artifacts("augment") / "eval.yaml").is_file():
        return None
    data = project.train_data(image_size=meta["image_size"])
    rows = data.part("test").head(16)
    if rows.empty:
        return None
    from tasks.dataset import CachedImages

    dataset = CachedImages(rows, data.clean_dir, data.eval_pipeline, meta["classes"])
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@app.command("lr-find")
def lr_find(
    start: float = typer.Option(1e-7, help="first LR of the sweep"),
    end: float = typer.Option(10.0, help="last LR of the sweep"),
    steps: int = typer.Option(100, min=10, help="training steps (batches)"),
) -> None:
    """LR range test on the train split: plot + suggested `lr` for params/train.yaml."""
    from tasks.files import write_csv, write_json
    from tasks.lr_find import lr_range_test, plot_lr_find

    project = _project()
    _validated(project)
    params = project.params("train")
    out = project.artifacts("lr_find")
    with console.status(f"LR range test ({steps} steps)…"):
        result = lr_range_test(params, project.train_data(), start, end, steps)  # type: ignore[arg-type]
    write_csv(result.curve, out / "lr_find.csv")
    write_json(
        {
            "suggestion": result.suggestion,
            "steepest": result.steepest,
            "min_over_10": result.min_over_10,
            "current_lr": params.lr,
        },  # type: ignore[attr-defined]
        out / "lr_find.json",
    )
    plot_lr_find(result, out / "lr_find.png")
    console.print(
        f"steepest descent at {result.steepest:.2e}, loss minimum / 10 at "
        f"{result.min_over_10:.2e}\n[bold]suggested lr: {result.suggestion:.2e}[/bold] "
        f"(params/train.yaml has {params.lr:g}); plot: {out / 'lr_find.png'}"  # type: ignore[attr-defined]
    )


@app.command()
def crossval() -> None:
    """k-fold cross-validation on the split's folds: mean ± std, fold ensemble, label issues."""
    from flows.crossval import crossval_flow
    from tasks.crossval import CrossvalError

    project = _project()
    _validated(project)
    try:
        cv_params = project.params("crossval")
    except ParamsError as exc:
        _fail(str(exc))
    try:
        summary = crossval_flow(cv_params, project.params("train"), str(project.root))  # type: ignore[arg-type]
    except CrossvalError as exc:
        _fail(str(exc))
    table = Table(title=f"cross-validation ({summary['folds']} folds, held-out images)")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for key, value in summary.items():
        if key.endswith("_mean"):
            std = summary[key.replace("_mean", "_std")]
            table.add_row(key.removesuffix("_mean"), f"{value:.4f} ± {std:.4f}")
    console.print(table)
    ens = summary.get("ensemble") or {}
    if ens:
        console.print(
            f"ensemble of {ens['models']} fold models on the test split: accuracy "
            f"{ens['test_accuracy_ensemble']:.4f} vs {ens['test_accuracy_single_mean']:.4f} "
            f"for one model (gain {ens['accuracy_gain']:+.4f})"
        )
    console.print(f"label issues: {project.artifacts('crossval') / 'label_issues.csv'}")


@server_app.command("start")
def server_start(
    port: int = typer.Option(4200, help="preferred port (a free one is picked if taken)"),
) -> None:
    """Start the project's Prefect server on 127.0.0.1 (reuses a running one)."""
    from flows.server import start_server

    project = _project()
    with console.status("starting the Prefect server…"):
        info = start_server(project, port=port)
    console.print(f"Prefect server running (pid {info.pid}). UI: [bold]{info.ui_url}[/bold]")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the project's Prefect server (by its recorded PID)."""
    from flows.server import stop_server

    project = _project()
    console.print("stopped" if stop_server(project) else "no server was running")


@server_app.command("status")
def server_status() -> None:
    """Say whether the project's server runs, and where."""
    from flows.server import running_server

    info = running_server(Project.find())
    if info:
        console.print(f"running (pid {info.pid}): UI {info.ui_url}, API {info.api_url}")
    else:
        console.print("not running: `visiontune server start`")
        raise typer.Exit(1)


def main() -> None:  # pragma: no cover - console entry for `python -m flows.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
