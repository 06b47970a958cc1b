"""`visiontune collect …`: bring labelled images into data/ from a source, then `dvc add`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from flows.cli_common import console, current_project, fail, writes_project

collect_app = typer.Typer(help="Bring labelled images into data/ and version them (dvc add).")


def print_collect(result: dict) -> None:
    console.print(
        f"data/: {result['new']} new, {result['changed']} changed, "
        f"{result['unchanged']} unchanged, {len(result['refused'])} refused"
        + (f", {len(result['removed'])} removed (--mirror)" if result["removed"] else "")
        + (f"; data.dvc now at {result['data_version']}" if result["data_version"] else "")
    )
    if result.get("split_folders"):
        console.print(
            f"the tree is split into {', '.join(result['split_folders'])} folders: labels are "
            "the folders inside them; split.yaml `folder_split` keeps its val and test images "
            "there"
        )
    if result.get("wrapper"):
        console.print(
            f"note: everything is under one folder, {result['wrapper']}, so it is one label; "
            "if it is the dataset's own folder, collect that folder instead (and --mirror "
            "to drop this collect's copies)"
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
        relabelled = result.get("relabelled")  # multi-label data only
        console.print(
            f"since the last version ({result['previous_version'] or 'none'}): "
            f"{len(images['added'])} added, {len(images['modified'])} modified, "
            f"{len(images['deleted'])} deleted image(s)"
            + (f", {relabelled} relabelled" if relabelled is not None else "")
        )
        if result["by_class"]:
            # single-label: files per class folder; multi-label: images gained/lost per label
            columns = list(result["by_class"][0])
            table = Table(title=f"changes per {columns[0]}")
            for column in columns:
                table.add_column(column, justify="left" if column == columns[0] else "right")
            for row in result["by_class"]:
                table.add_row(*(str(row[c]) for c in columns))
            console.print(table)
    elif result["data_version"]:
        console.print("the previous version is not in the local DVC cache: no file-level diff")


def _collect(source: str, location: str = "", **options) -> None:
    from flows.collect import run_collect
    from tasks.sources import SourceError

    project = current_project()
    try:
        result = run_collect(source, location, str(project.root), **options)  # type: ignore[arg-type]
    except SourceError as exc:
        fail(str(exc))
    print_collect(result)


MIRROR = typer.Option(
    False,
    "--mirror",
    help="make data/ hold exactly this source: remove images in data/ that it no longer has "
    "(deleted, or moved to another label); an entry refused this time keeps its old copy. "
    "Also the only way to collect multi-label images into single-label data/ (or back): "
    "data/ is then replaced",
)

# --timeout … --workers: the options of every command that downloads, as one DownloadLimits
DOWNLOAD_OPTIONS = {
    "timeout": (
        float,
        typer.Option(30.0, min=0.1, help="seconds allowed for one download attempt"),
    ),
    "max_mb": (
        float,
        typer.Option(
            50.0,
            min=0.001,
            help="largest file accepted (download or local), in MiB; checked by stat",
        ),
    ),
    "retries": (int, typer.Option(3, min=0, help="retries of a timed-out or 5xx download")),
    "backoff": (
        float,
        typer.Option(1.0, min=0.0, help="seconds before the first retry (doubled each time)"),
    ),
    "workers": (int, typer.Option(8, min=1, help="downloads in flight at once")),
    "allow_private": (
        bool,
        typer.Option(
            False,
            "--allow-private",
            help="also fetch from loopback, private (RFC 1918, IPv6 ULA) and CGNAT hosts, "
            "e.g. your own image server; link-local (cloud metadata), 0.0.0.0, multicast "
            "and reserved addresses stay refused",
        ),
    ),
}


def download_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command(…, limits=DownloadLimits)` as a command taking the DOWNLOAD_OPTIONS."""
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "limits"]
    added = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
        for name, (kind, option) in DOWNLOAD_OPTIONS.items()
    ]

    @functools.wraps(command)
    def with_limits(**values: Any) -> None:
        from tasks.download import DownloadLimits

        limits = DownloadLimits(
            timeout=values.pop("timeout"),
            max_bytes=int(values.pop("max_mb") * 2**20),
            retries=values.pop("retries"),
            backoff=values.pop("backoff"),
            workers=values.pop("workers"),
            allow_private=values.pop("allow_private"),
        )
        command(**values, limits=limits)

    del with_limits.__wrapped__  # typer reads the signature below, not the command's
    with_limits.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    with_limits.__annotations__ = {
        **{p.name: p.annotation for p in own},
        **{name: kind for name, (kind, _) in DOWNLOAD_OPTIONS.items()},
    }
    return with_limits


@collect_app.command("demo")
@writes_project
def collect_demo(
    per_class: int = typer.Option(120, min=1, help="images per class (demo categories)"),
    mirror: bool = MIRROR,
) -> None:
    """The offline demo set: Noto emoji PNGs (npm emoji-datasource-google), label = category."""
    _collect("demo", per_class=per_class, mirror=mirror)


@collect_app.command("folder")
@writes_project
def collect_folder(
    path: Path = typer.Argument(
        ..., help="an ImageFolder tree: PATH/<label>/<image> or PATH/train|val|test/<label>/<image>"
    ),
    max_mb: float = DOWNLOAD_OPTIONS["max_mb"][1],
    mirror: bool = MIRROR,
) -> None:
    """Copy an ImageFolder tree (one sub-folder per label) into data/.

    A tree shipped split (train/, val/, test/ folders holding the label folders)
    keeps its val and test images in those splits (split.yaml folder_split).
    Files over --max-mb, FIFOs, sockets, devices, broken or looping links are
    refused with a reason and never read; the rest is collected.
    """
    if not path.is_dir():
        fail(f"{path} is not a folder")
    from tasks.download import DownloadLimits

    limits = DownloadLimits(max_bytes=int(max_mb * 2**20))
    _collect("folder", str(path.resolve()), limits=limits, mirror=mirror)


def _label_sep(value: str) -> str:
    from tasks.sources import LABEL_SEPARATORS

    if value not in LABEL_SEPARATORS:
        raise typer.BadParameter(
            f"{value!r}: use one of {', '.join(map(repr, LABEL_SEPARATORS))} (quote it: "
            "--label-sep '|')"
        )
    return value


@collect_app.command("manifest")
@writes_project
@download_options
def collect_manifest(
    file: Path = typer.Argument(
        ..., help="CSV or parquet: label (or labels) + path and/or url (+ extras)"
    ),
    label_sep: str = typer.Option(
        " ",
        "--label-sep",
        callback=_label_sep,
        show_default=False,
        help="multi-label: what separates the labels in a `labels` cell: ' ' (any whitespace, "
        "the default), '|', ';' or ',' (quote it: --label-sep '|'); use '|', ';' or ',' when "
        "label names hold spaces",
    ),
    label_columns: str = typer.Option(
        "",
        "--label-columns",
        metavar="A,B,C",
        help="multi-label from one-hot columns: the comma-separated names of the manifest's "
        "columns that are one label each (cells 0/1, true/false, yes/no, any case; another "
        "value refuses the row as bad_label_value); the column name is the label",
    ),
    allow_empty: bool = typer.Option(
        False,
        "--allow-empty",
        help="multi-label: keep images whose label set is empty (no label applies) instead of "
        "refusing them as no_label; clean keeps them too",
    ),
    mirror: bool = MIRROR,
    limits: Any = None,
) -> None:
    """Collect the rows of a manifest; relative paths resolve against the manifest's folder.

    Paths that leave that folder (../, absolute, symlinks) are refused; URLs are
    downloaded safely. Other columns (e.g. `group`) are kept in data/sources.csv.

    Multi-label: a `labels` column instead of `label` gives each image a set of labels
    ("beach dog sunset"; --label-sep for '|', ';' or ','), or --label-columns names
    0/1 columns. Images go to data/_images/, their sets to data/sources.csv, and
    data/task.json marks data/ as multi-label. One data/ holds one kind: collecting
    the other kind into it is refused unless --mirror replaces data/.
    """
    columns = [c.strip() for c in label_columns.split(",") if c.strip()] or None
    _collect(
        "manifest",
        str(file.resolve()),
        limits=limits,
        mirror=mirror,
        label_sep=label_sep,
        label_columns=columns,
        allow_empty=allow_empty,
    )


@collect_app.command("urls")
@writes_project
@download_options
def collect_urls(
    file: Path = typer.Argument(..., help="a text file of 'URL [LABEL]' lines"),
    label: str = typer.Option("", help="label for lines that carry none"),
    mirror: bool = MIRROR,
    limits: Any = None,
) -> None:
    """Download a list of image URLs (http/https only) into data/<label>/."""
    _collect("urls", str(file.resolve()), label=label, limits=limits, mirror=mirror)
