"""Scheduled retraining and the project's Prefect server: retrain, serve, server …"""

from __future__ import annotations

import typer

from flows.cli_collect import print_collect
from flows.cli_common import (
    console,
    current_project,
    err,
    fail,
    print_ui,
    validated,
    writes_project,
)
from flows.project import Project

server_app = typer.Typer(help="The project-local Prefect server (127.0.0.1) and its UI.")
schedule_app = typer.Typer()


@schedule_app.command()
@writes_project
def retrain() -> None:
    """Collect (params/retrain.yaml), retrain if data changed, promote only a better model."""
    from flows.retrain import retrain_flow
    from tasks.sources import SourceError

    project = current_project()
    validated(project)
    try:
        result = retrain_flow(project.params("retrain"), str(project.root))  # type: ignore[arg-type]
    except SourceError as exc:
        fail(f"params/retrain.yaml source: {exc}")
    print_collect(result["collect"])
    console.print(result.get("reason") or result["decision"])
    print_ui(project)


@schedule_app.command()
def serve(
    cron: str = typer.Option("0 3 * * *", help="when to retrain (cron, UTC)"),
    name: str = typer.Option("scheduled-retrain", help="the retrain deployment's name"),
) -> None:
    """Serve scheduled retraining (and an on-demand pipeline) from this machine; Ctrl-C stops.

    One run at a time: both deployments write the same project, so a run that comes due
    while another is running waits for it.
    """
    from flows.pipeline import pipeline_flow
    from flows.retrain import retrain_flow
    from flows.serving import serve as serve_deployments

    project = current_project()
    validated(project)
    root = {"root": str(project.root)}
    console.print(
        f"serving 'retrain/{name}' on cron '{cron}' and 'pipeline/on-demand'; Ctrl-C stops"
    )
    stopped = serve_deployments(
        retrain_flow.to_deployment(name=name, cron=cron, parameters=root),
        pipeline_flow.to_deployment(name="on-demand", parameters=root),
        limit=1,
    )
    ended = (
        f"; ended {', '.join(stopped.ended)}: its stage resumes on the next run"
        if stopped.ended
        else ""
    )
    console.print(f"stopped by {stopped.signal}{ended}", highlight=False, soft_wrap=True)


def _warn_server_errors(project: Project, info) -> bool:
    """Print the server's logged errors in one line; True if there were any."""
    from flows.project.server import LOG, describe_errors, server_errors

    line = describe_errors(server_errors(project, info), project.prefect_home / LOG)
    if line:
        err.print(f"[yellow]warning:[/yellow] {line}", highlight=False, soft_wrap=True)
    return line is not None


@server_app.command("start")
def server_start(
    port: int = typer.Option(4200, help="preferred port (a free one is picked if taken)"),
) -> None:
    """Start the project's Prefect server on 127.0.0.1 (reuses a running one)."""
    from flows.project.server import start_server

    project = current_project()
    with console.status("starting the Prefect server…"):
        info = start_server(project, port=port)
    console.print(f"Prefect server running (pid {info.pid}). UI: [bold]{info.ui_url}[/bold]")
    _warn_server_errors(project, info)


@server_app.command("stop")
def server_stop() -> None:
    """Stop the project's Prefect server (by its recorded PID)."""
    from flows.project.server import stop_server

    project = current_project()
    console.print("stopped" if stop_server(project) else "no server was running")


@server_app.command("status")
def server_status() -> None:
    """Say whether the project's server runs, and where; exit 3 if its services logged errors."""
    from flows.project.server import running_server

    project = current_project()
    info = running_server(project)
    if not info:
        console.print("not running: `visiontune server start`")
        raise typer.Exit(1)
    console.print(f"running (pid {info.pid}): UI {info.ui_url}, API {info.api_url}")
    if _warn_server_errors(project, info):
        raise typer.Exit(3)
