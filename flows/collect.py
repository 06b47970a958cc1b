"""The collect flow (outside the DAG): write images into data/ and version them with DVC."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import flow

from flows.naming import stage_run_name
from flows.project import Project
from tasks.collect import dvc_add, write_items


def source_items(source: str, path: str | None = None) -> Callable[[], list]:
    """A deferred reader of the named source: 'demo' or 'folder' (an ImageFolder tree)."""
    from tasks.collect import demo_items, fetch_demo_package, folder_items

    if source == "demo":
        return lambda: demo_items(fetch_demo_package())
    if source == "folder" and path:
        return lambda: folder_items(Path(path))
    raise ValueError(f"unknown collect source {source!r} (path={path!r})")


@flow(name="collect", flow_run_name=stage_run_name("collect"), log_prints=True)
def collect_flow(items: Callable[[], list[tuple[str, str, bytes]]], root: str = ".") -> dict:
    """`items` yields (label, file name, bytes); `dvc add data` runs only if something changed."""
    project = Project(Path(root))
    report = write_items(items(), project.data)
    version = dvc_add(project.data) if (report.new or report.changed) else None
    return {
        "new": len(report.new),
        "changed": len(report.changed),
        "unchanged": report.unchanged,
        "data_version": version,
    }
