"""What every `visiontune` command shares: the consoles, the project, one-line errors."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from flows.project import Project
from params import ParamsError

console = Console()
err = Console(stderr=True)


def current_project() -> Project:
    return Project.find()


def fail(message: str, code: int = 2) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def print_metrics(project: Project) -> None:
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


def print_ui(project: Project) -> None:
    from flows.project.server import running_server

    server = running_server(project)
    if server:
        console.print(f"Prefect UI: [bold]{server.ui_url}[/bold]")


def data_errors() -> tuple[type[Exception], ...]:
    """What a stage raises when the data or params cannot work (one class, no training image
    for a class, an impossible pipeline): the user gets its one line, not a traceback."""
    from tasks.augment import PipelineError
    from tasks.balance import BalanceError
    from tasks.model import ModelError
    from tasks.split import SplitError
    from tasks.transforms import TransformError

    return (SplitError, BalanceError, PipelineError, TransformError, ModelError)


def validated(project: Project) -> None:
    try:
        project.validate_all()
    except ParamsError as exc:
        fail(str(exc))
