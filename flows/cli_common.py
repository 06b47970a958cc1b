"""What every `visiontune` command shares: the consoles, the project, one-line errors."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import typing
from collections.abc import Callable
from typing import Any

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


LOCKED = 75  # EX_TEMPFAIL: --no-wait and another command holds the project
NO_WAIT = typer.Option(
    False,
    "--no-wait",
    help=f"if another command is writing this project, exit at once (code {LOCKED}) "
    "instead of waiting for it",
)


def writes_project(command: Callable[..., Any]) -> Callable[..., Any]:
    """`command` holding the project lock (flows/project/lock.py), with a --no-wait option.
    A `tune --worker` shares the study with other workers by design and takes no lock."""
    signature = inspect.signature(command)
    added = inspect.Parameter("no_wait", inspect.Parameter.KEYWORD_ONLY, default=NO_WAIT,
                              annotation=bool)  # fmt: skip

    @functools.wraps(command)
    def locked(**values: Any) -> Any:
        from flows.project.lock import ProjectLocked, project_lock

        no_wait = values.pop("no_wait")
        if values.get("worker"):
            return command(**values)
        name = _command_path()
        lock = project_lock(current_project(), name, wait=not no_wait, on_wait=err.print)
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(lock)
            except ProjectLocked as exc:
                fail(f"{exc}; not waiting (--no-wait)", LOCKED)
            return command(**values)

    # typer reads the signature below, with the annotations resolved where `command` lives
    hints = typing.get_type_hints(command, include_extras=True)
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()
    ]
    del locked.__wrapped__
    locked.__signature__ = signature.replace(parameters=[*own, added])  # type: ignore[attr-defined]
    locked.__annotations__ = {**{p.name: p.annotation for p in own}, "no_wait": bool}
    return locked


def _command_path() -> str:
    """`visiontune collect folder`: the running command, for the lock holder's line."""
    try:
        from typer._click.globals import get_current_context  # typer's own click

        return get_current_context().command_path
    except (ImportError, RuntimeError):
        import sys

        return " ".join(["visiontune", *[a for a in sys.argv[1:] if not a.startswith("-")][:2]])


SERVER_GONE = 69  # EX_UNAVAILABLE: the Prefect server died under the command
WATCH = {"enabled": False}  # set by the console script's main(), never by an in-process runner


def watch_server(project: Project) -> None:
    """End this process in one line if the Prefect server it reports to dies (see
    flows/project/watchdog.py)."""
    import os

    from flows.project.watchdog import watch

    url = os.environ.get("PREFECT_API_URL")
    if WATCH["enabled"] and url:
        watch(project, url, _server_gone)


def _server_gone(url: str, seconds: float) -> None:
    import os
    import sys

    err.print(
        f"[red]error:[/red] the Prefect server at {url} stopped answering ({seconds:.0f} s); "
        "the stages that finished are recorded in dvc.lock. Start it (`visiontune server "
        "start`) and run the command again: training resumes from its checkpoint, a search "
        "from its study",
        highlight=False,
        soft_wrap=True,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(SERVER_GONE)


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
    from tasks.secrets import MissingVariable
    from tasks.split import SplitError
    from tasks.transforms import TransformError

    return (SplitError, BalanceError, PipelineError, TransformError, ModelError, MissingVariable)


def validated(project: Project, environment: bool = True) -> None:
    """Every params file is valid, and (`environment`: a command about to run) every `${VAR}`
    that tune's storage refers to is set: one line each, before any work starts."""
    try:
        params = project.validate_all()
    except ParamsError as exc:
        fail(str(exc))
    if not environment:
        return
    from flows.stages import missing_tracked_keys

    missing = missing_tracked_keys(project.root)
    if missing:
        fail("\n".join(missing))
    storage = params["tune"].storage  # type: ignore[attr-defined]
    if storage:
        from tasks.secrets import MissingVariable, expand_env

        try:
            expand_env(storage, "params/tune.yaml: storage")  # the value itself is dropped
        except MissingVariable as exc:
            fail(str(exc))
