"""The `visiontune` command line. Heavy imports stay inside commands so --help is instant."""

from __future__ import annotations

import subprocess
import sys
from enum import Enum

import typer
from rich.table import Table

from flows.cli_collect import collect_app
from flows.cli_common import (
    console,
    current_project,
    data_errors,
    fail,
    print_metrics,
    print_ui,
    validated,
)
from flows.cli_model import model_app
from flows.cli_server import schedule_app, server_app
from flows.project import Project
from flows.project.environment import configure
from flows.stages import STAGES

app = typer.Typer(
    help="Fine-tune pretrained image classifiers on your labelled images: "
    "a Prefect + DVC pipeline (collect → clean → split → augment → tune → train → evaluate).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(collect_app, name="collect")
app.add_typer(model_app)
app.add_typer(schedule_app)
app.add_typer(server_app, name="server")

StageName = Enum("StageName", {s: s for s in STAGES}, type=str)  # type: ignore[misc]


@app.callback()
def _setup() -> None:
    """Runs before every command, before prefect is imported (it reads settings at import)."""
    configure(Project.find())


@app.command()
def stage(name: StageName = typer.Argument(..., help="the stage to run")) -> None:  # type: ignore[valid-type]
    """Run one stage's flow now (the cmd of each dvc.yaml stage; `dvc repro` calls this)."""
    from flows.pipeline import run_stage
    from tasks.distributed import launched_command, ranks

    project = current_project()
    validated(project)
    if name.value == "train" and (command := launched_command([sys.argv[0], "stage", "train"])):
        import subprocess

        console.print(f"launching: {' '.join(command)}")
        raise typer.Exit(subprocess.run(command).returncode)  # $VISIONTUNE_LAUNCHER, e.g. torchrun
    if any(not (project.root / path).exists() for path in STAGES[name.value].reads):
        _fail_if_stale(project, name.value, "its inputs are missing")
    try:
        if name.value == "train" and not ranks().is_main:  # torchrun: only rank 0 runs the flow
            from flows.train import train_worker

            train_worker(project.params("train"), str(project.root))  # type: ignore[arg-type]
            return
        run_stage(project, name.value)
    except Exception as exc:
        _fail_if_stale(project, name.value, f"it failed ({type(exc).__name__}: {exc})")
        if isinstance(exc, data_errors()):
            fail(f"{name.value}: {exc}", 1)
        raise


def _fail_if_stale(project: Project, name: str, why: str) -> None:
    """One line naming the stale upstream stages and the command that refreshes them."""
    from flows.project.dag import stale_stages

    try:
        stale = stale_stages(project.root, name, upstream_only=True)
    except Exception:  # cannot be told, e.g. while `dvc repro` holds the repo lock
        stale = []
    if stale:
        fail(
            f"stage {name} cannot run: {why}; {', '.join(stale)} changed since they last ran: "
            f"run `visiontune run --until {name}` to bring them up to date first"
        )


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
    from flows.project.dag import stale_stages

    project = current_project()
    validated(project)
    if not project.data.is_dir():
        fail(f"{project.data} does not exist: bring images in with `visiontune collect` first")
    stop_at = until.value if until else None
    if not force and not stale_stages(project.root, stop_at):
        console.print("Everything is up to date.")
        print_metrics(project)
        return
    from flows.pipeline import pipeline_flow

    try:
        result = pipeline_flow(str(project.root), force=force, until=stop_at)
    except data_errors() as exc:
        fail(str(exc), 1)
    if result["ran"]:
        table = Table(title="stages run")
        table.add_column("stage")
        table.add_column("seconds", justify="right")
        for name, seconds in result["seconds"].items():
            table.add_row(name, f"{seconds:.1f}")
        console.print(table)
    else:
        console.print("Everything is up to date.")
    print_metrics(project)
    print_ui(project)


@app.command("offline-plots")
def offline_plots() -> None:
    """Make `dvc plots show/diff` render offline: a template with Vega inlined (make install)."""
    from tasks.offline_plots import install_template

    project = current_project()
    try:
        path = install_template(project.root)
    except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
        fail(f"could not build the offline plots template: {exc}", 1)
    console.print(f"dvc plots now render offline: {path.relative_to(project.root)}")


@app.command()
def metrics() -> None:
    """Print the last evaluation's test metrics."""
    project = current_project()
    if not (project.artifacts("evaluate") / "metrics.json").is_file():
        fail("no metrics yet: run `visiontune run` first", 1)
    print_metrics(project)


@app.command("check-params")
def check_params() -> None:
    """Validate every params/*.yaml against the schema without running anything."""
    from params import STAGE_MODELS

    project = current_project()
    validated(project)
    names = ", ".join(project.params_file(name).name for name in STAGE_MODELS)
    console.print(f"params OK: {names}")


@app.command()
def tune(
    worker: bool = typer.Option(
        False, help="only pull trials of the shared study until the budget is met"
    ),
) -> None:
    """Run the Optuna search (and any stale stage before it); a killed search resumes."""
    from flows.pipeline import pipeline_flow

    project = current_project()
    validated(project)
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
    print_ui(project)


def main() -> None:  # pragma: no cover - console entry for `python -m flows.cli`
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
