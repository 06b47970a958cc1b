"""The collect flow (outside the DAG): bring a source into data/ and version it with DVC."""

from __future__ import annotations

import functools
import inspect
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from prefect import flow, get_run_logger
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.naming import stage_run_name
from flows.project import Project
from flows.report import publish_markdown, publish_table
from tasks.collect import (
    CollectReport,
    changes_by_class,
    data_version,
    dvc_add,
    fetch_demo_package,
    file_sha256,
    label_changes,
    record,
    remove_absent,
    remove_empty_folders,
    remove_stale_temps,
    unique_destinations,
    update_records,
    version_diff,
    write_items,
    write_task,
)
from tasks.download import DownloadLimits, DownloadRefused, download_task
from tasks.sources import (
    DEMO_PER_CLASS,
    FOLDER_SPLIT,
    MULTI_LABEL,
    Refusal,
    SourceError,
    SourceItem,
    data_kind,
    demo_items,
    folder_items,
    manifest_items,
    url_list_items,
    wrapper_folder,
)

SourceKind = Literal["demo", "folder", "manifest", "urls"]


def read_source(
    source: SourceKind,
    location: str,
    label: str,
    per_class: int,
    max_bytes: int,
    label_sep: str = " ",
    label_columns: list[str] | None = None,
    allow_empty: bool = False,
) -> tuple[list[SourceItem], list[Refusal]]:
    match source:
        case "demo":
            return demo_items(fetch_demo_package(), per_class=per_class), []
        case "folder":
            return folder_items(Path(location), max_bytes)
        case "manifest":
            return manifest_items(Path(location), max_bytes, label_sep, label_columns, allow_empty)
        case "urls":
            return url_list_items(Path(location), default_label=label)
    raise ValueError(f"unknown source {source!r}")


def download_items(
    items: list[SourceItem], data_dir: Path, limits: DownloadLimits
) -> CollectReport:
    """Download URL items that are not in data/ yet, concurrently, each a retried Prefect task."""
    report = CollectReport()
    pending = []
    fetch = download_task(limits)
    for item in items:
        dest = data_dir / item.folder / item.name
        rel = dest.relative_to(data_dir).as_posix()
        if dest.is_file():  # a URL's file name is fixed by the URL: already collected
            report.unchanged += 1
            report.records.append(record(item, rel, file_sha256(dest)))
        else:
            pending.append((item, rel, fetch.submit(item.url, dest, limits)))
    for item, rel, future in pending:
        future.wait()
        state = future.state
        if state.is_completed():
            report.new.append(rel)
            report.records.append(record(item, rel, future.result().sha256))
            continue
        exc = state.result(raise_on_failure=False)
        if isinstance(exc, DownloadRefused):
            report.refused.append(Refusal(item.origin, exc.reason, exc.detail))
        else:
            report.refused.append(Refusal(item.origin, "download_failed", repr(exc)))
    return report


def kind_of(items: list[SourceItem], data: Path, mirror: bool) -> tuple[str | None, bool]:
    """The kind of labels this source brings (None: no item), and whether it replaces data/ of
    the other kind, which only --mirror may do: one data/ holds one kind."""
    kinds = {item.kind for item in items}
    kind = MULTI_LABEL if MULTI_LABEL in kinds else next(iter(kinds), None)
    held = data_kind(data)
    if kind is None or held is None or kind == held:
        return kind, False
    if not mirror:
        name = {MULTI_LABEL: "multi-label (a set of labels per image)"}
        single = "single-label (one label per image)"
        raise SourceError(
            f"data/ holds {name.get(held, single)} images and this source is "
            f"{name.get(kind, single)}: add --mirror to replace data/ with it, or collect it "
            "into another project"
        )
    return kind, True


def changes_of(data: Path, root: Path, previous: str | None, version: str, changes) -> dict:
    """The per-class table of the diff since the last version: file changes per folder for
    single-label data; for multi-label data, images gained and lost per label (relabels
    included) and how many images were relabelled."""
    if data_kind(data) != MULTI_LABEL:
        return {"by_class": changes_by_class(changes).to_dict(orient="records")}
    found = label_changes(root, previous, version)
    if found is None:  # a version not in the local cache: the file-level diff is all there is
        return {"by_class": [], "relabelled": None}
    table, relabelled = found
    return {"by_class": table.to_dict(orient="records"), "relabelled": relabelled}


def _summary(report: CollectReport, result: dict) -> str:
    lines = [
        "# collect\n",
        f"**{len(report.new)}** new, **{len(report.changed)}** changed, "
        f"**{report.unchanged}** unchanged, **{len(report.refused)}** refused"
        + (f", **{len(report.removed)}** removed (mirror)" if report.removed else "")
        + ".\n",
    ]
    if result["data_version"]:
        lines.append(f"data.dvc: `{result['previous_version']}` → `{result['data_version']}`\n")
    if result["by_class"]:
        lines.append("## changes since the last version\n")
        if result.get("relabelled"):  # multi-label: the table is per label, relabels included
            lines.append(f"**{result['relabelled']}** image(s) relabelled.\n")
        lines.append(pd.DataFrame(result["by_class"]).to_markdown(index=False))
    return "\n".join(lines)


@flow(name="collect", flow_run_name=stage_run_name("collect"), log_prints=True)
def collect_flow(
    source: SourceKind,
    location: str = "",
    root: str = ".",
    label: str = "",
    per_class: int = DEMO_PER_CLASS,
    limits: DownloadLimits = DownloadLimits(),
    mirror: bool = False,
    label_sep: str = " ",
    label_columns: list[str] | None = None,
    allow_empty: bool = False,
) -> dict:
    """Write a source's images into data/; `dvc add data` runs only if something changed.

    `mirror`: data/ ends up holding exactly this source's images (see remove_absent).
    `label_sep`, `label_columns`, `allow_empty`: a multi-label manifest (manifest_items).
    """
    log = get_run_logger()
    project = Project(Path(root))
    data = project.data
    stale = remove_stale_temps(data)
    if stale:
        log.warning("removed %d temp file(s) left in data/ by an interrupted collect", stale)
    previous = data_version(project.root)
    items, refused = read_source(
        source, location, label, per_class, limits.max_bytes, label_sep, label_columns, allow_empty
    )
    items, clashes = unique_destinations(items)
    refused = refused + clashes
    kind, replacing = kind_of(items, data, mirror)
    local = [i for i in items if i.url is None]
    remote = [i for i in items if i.url is not None]
    report = CollectReport(refused=refused)
    if local:
        # quote: no per-item visit; local files get the same size limit as downloads
        report = report.merge(write_items(quote(local), data, limits.max_bytes))
    if remote:
        report = report.merge(download_items(remote, data, limits))
    task_changed = False
    if data.is_dir():
        if mirror:
            report.removed = remove_absent(data, report, keep_refused=not replacing)
        remove_empty_folders(data)  # before the tables: labels.csv keeps only folders in data/
        if kind is not None:  # data/task.json: written for multi-label, removed for single
            task_changed = write_task(data, kind, allow_empty)
    tables_changed = (
        update_records(data, report.records) if report.records or report.removed else False
    )
    changed = bool(report.new or report.changed or report.removed or tables_changed or task_changed)
    version = dvc_add(data) if changed or (data.is_dir() and previous is None) else None
    changes = version_diff(project.root, previous, version) if version else None
    result = {
        "new": len(report.new),
        "changed": len(report.changed),
        "unchanged": report.unchanged,
        "removed": report.removed,
        "refused": [asdict(r) for r in report.refused],
        "previous_version": previous,
        "data_version": version,
        "since_last": changes,
        **(
            changes_of(data, project.root, previous, version, changes)
            if changes
            else {"by_class": []}
        ),
        "split_folders": sorted({s for i in items for c, s in i.extra if c == FOLDER_SPLIT}),
        "wrapper": str(wrapped)
        if source == "folder" and (wrapped := wrapper_folder(Path(location)))
        else None,
    }
    log.info(
        "%d new, %d changed, %d unchanged, %d refused, %d removed",
        *(len(report.new), len(report.changed), report.unchanged),
        *(len(report.refused), len(report.removed)),
    )
    publish_markdown("collect-summary", _summary(report, result))
    if report.refused:
        refusals = pd.DataFrame(result["refused"])
        publish_table("collect-refused", refusals, "entries that were not collected")
        for r in report.refused:
            log.warning("refused %s: %s (%s)", r.source, r.reason, r.detail)
    return result


@functools.wraps(collect_flow.fn)
def run_collect(*args: Any, **kwargs: Any) -> dict:
    """The collect flow (same arguments) with as many download threads as `limits.workers`
    allows."""
    bound = inspect.signature(collect_flow.fn).bind(*args, **kwargs)
    bound.apply_defaults()
    runner = ThreadPoolTaskRunner(max_workers=bound.arguments["limits"].workers)
    return collect_flow.with_options(task_runner=runner)(*bound.args, **bound.kwargs)
