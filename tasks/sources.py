"""Where images come from: the demo set, an ImageFolder tree, a CSV/parquet manifest, a URL list.

Each reader returns the items to write into data/<folder>/<name> and the
entries it refused. An entry is refused with a reason, never followed, when it
is unsafe (a path escaping its root, a symlink pointing outside it, a URL that
is not http/https) or unusable (missing file, no label).

A manifest may be multi-label (a `labels` column, or one-hot columns): its
images go to data/_images/<name>, their label sets into data/sources.csv, and
data/task.json says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tarfile
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pandas as pd

from tasks.files import FileRefused, printable, regular_size
from tasks.secrets import mask_url

DEMO_PACKAGE = "emoji-datasource-google"
DEMO_VERSION = "16.0.0"
# Visually distinct emoji categories; "Component" (5 skin-tone swatches) is left out.
DEMO_CLASSES = (
    "Animals & Nature",
    "Flags",
    "Food & Drink",
    "Smileys & Emotion",
    "Travel & Places",
)
DEMO_PER_CLASS = 120

# Columns visiontune itself writes into data/sources.csv and the clean/split tables: a
# collect manifest may carry other columns (e.g. `group`), but not these.
RESERVED_COLUMNS = frozenset(
    {"path", "url", "label", "source", "sha256", "original_label", "folder"}
    | {"labels", "original_labels"}
    | {"bytes", "width", "height", "cache", "phash", "mode", "dup_group", "split", "fold"}
)
MAX_NAME = 120
MAX_NAME_BYTES = 200
# The two tables collect keeps in data/ beside the images (see tasks/collect.py).
LABELS_FILE = "labels.csv"
SOURCES_FILE = "sources.csv"
# Multi-label data: data/task.json = {"task": "multi_label", "allow_empty": <bool>} (its absence
# means single-label), and every image in data/_images/ (safe_label strips a leading '_', so no
# single-label class folder has that name), its label set in data/sources.csv.
TASK_FILE = "task.json"
IMAGES_FOLDER = "_images"
SINGLE_LABEL = "single_label"
MULTI_LABEL = "multi_label"
# how the labels of a manifest's `labels` cell are separated (--label-sep)
LABEL_SEPARATORS = (" ", "|", ";", ",")
# the cells a one-hot label column (--label-columns) may hold, case-insensitive
ONE_HOT = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
# Top-level folder names of a tree shipped already split (root/train/<label>/…), and the
# split each names; collect records it in the `folder_split` column.
SPLIT_FOLDERS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
FOLDER_SPLIT = "folder_split"


@dataclass(frozen=True)
class SourceItem:
    """One image to bring into data/: from a local file, a URL, or bytes in memory."""

    label: str  # the original label; the folder is safe_label(label) ("" when multi-label)
    name: str  # file name under data/<folder>/
    origin: str  # where it came from, recorded in data/sources.csv
    path: Path | None = None
    url: str | None = None
    data: bytes | None = None
    extra: tuple[tuple[str, str], ...] = ()  # other manifest columns, e.g. (("group", "s7"),)
    # multi-label: the original labels (label_set: one per safe name); the folder is _images
    labels: tuple[str, ...] | None = None

    @property
    def folder(self) -> str:
        return IMAGES_FOLDER if self.labels is not None else safe_label(self.label)

    @property
    def kind(self) -> str:
        return MULTI_LABEL if self.labels is not None else SINGLE_LABEL


@dataclass(frozen=True)
class Refusal:
    source: str
    reason: str
    detail: str


class SourceError(ValueError):
    """The source as a whole cannot be read (missing file, wrong columns)."""


def safe_label(label: str) -> str:
    """A label as a folder name: ASCII lowercase words joined by '_' ('Food & Drink' → food_drink).

    A label with no usable ASCII characters ('猫') becomes label_<hash>, so two
    such labels never share a folder; data/labels.csv keeps the original.
    """
    text = printable(str(label)).strip()
    if not text:
        raise ValueError("empty label")
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    name = re.sub(r"[^0-9a-zA-Z]+", "_", ascii_text).strip("_").lower()[:64].strip("_")
    if not name:
        name = "label_" + hashlib.sha256(text.encode()).hexdigest()[:10]
    return name


def label_set(names: list[str]) -> tuple[str, ...]:
    """An image's original labels, one per safe name (the first of names that share one), in
    the order of their safe names: data/sources.csv records them as `original_labels` beside
    `labels`, the join_set of those safe names."""
    first: dict[str, str] = {}
    for name in names:
        first.setdefault(safe_label(name), name)
    return tuple(first[safe] for safe in sorted(first))


def data_task(data_dir: Path) -> dict | None:
    """data/task.json ({"task": "multi_label", "allow_empty": bool}); None: single-label data."""
    path = data_dir / TASK_FILE
    if not path.is_file():
        return None
    try:
        task = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{printable(str(path))}: not readable JSON ({exc})") from exc
    if not isinstance(task, dict) or task.get("task") != MULTI_LABEL:
        raise ValueError(
            f'{printable(str(path))}: expected {{"task": "{MULTI_LABEL}", "allow_empty": '
            "false}: collect the data again (with --mirror) to rewrite it"
        )
    return {"task": MULTI_LABEL, "allow_empty": bool(task.get("allow_empty", False))}


def data_kind(data_dir: Path) -> str | None:
    """What data/ holds now: multi_label (task.json), single_label (class folders), or None
    (nothing yet)."""
    if data_task(data_dir) is not None:
        return MULTI_LABEL
    try:
        folders = any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(data_dir))
    except OSError:
        return None
    return SINGLE_LABEL if folders else None


def safe_name(name: str) -> str:
    """A file name that is safe in any folder and on any file system: valid UTF-8 (other bytes
    become \\xNN escapes, then '_xNN'), NFC-normalised (macOS would fold an NFD twin onto it),
    no separators or control characters, no leading dot (hidden files are ignored), at most
    MAX_NAME characters and MAX_NAME_BYTES bytes (file systems allow 255 bytes, and the temp
    file of an atomic write adds 14); a shortened name ends in a hash of the whole one."""
    text = unicodedata.normalize("NFC", printable(name))
    cleaned = re.sub(r"[/\\\x00-\x1f\x7f]+", "_", text).strip().lstrip(".") or "file"
    if len(cleaned) > MAX_NAME or len(cleaned.encode()) > MAX_NAME_BYTES:
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        suffix = Path(cleaned).suffix if len(Path(cleaned).suffix) <= 10 else ""
        room = MAX_NAME_BYTES - 11 - len(suffix.encode())
        head = cleaned[: MAX_NAME - 22].encode()[:room].decode(errors="ignore")
        cleaned = f"{head}_{digest}{suffix}"
    return cleaned


def url_name(url: str) -> str:
    """data/ file name for a URL: a short hash of the URL (unique) + its last path segment."""
    tail = PurePosixPath(unquote(urlsplit(url).path)).name or "image"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}_{safe_name(tail)}"


def encoded_url(url: str) -> str:
    """A URL as ASCII: bytes that are not UTF-8 (a mis-encoded list) are percent-encoded."""
    return quote(url.encode("utf-8", "surrogateescape"), safe="".join(map(chr, range(33, 127))))


def check_url(url: str) -> Refusal | None:
    """Only absolute http(s) URLs are fetched; anything else is refused before any network."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return Refusal(mask_url(url), "bad_scheme", "only http:// and https:// URLs are downloaded")
    return None


def inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_within(
    raw: str, root: Path, max_bytes: int | None = None
) -> tuple[tuple[Path, Path] | None, Refusal | None]:
    """(the path as written, normalised; the real file) of an entry that stays inside `root`.

    `../`, absolute paths outside the root, and symlinks whose target is outside
    the root are refused; relative paths resolve against the root. The target
    must be a regular file of at most `max_bytes`, which stat tells without
    opening it (a FIFO is never opened, a huge file never read).
    """
    shown = printable(raw)
    given = Path(raw)
    candidate = given if given.is_absolute() else root / given
    lexical = Path(os.path.normpath(candidate))
    if not inside(lexical, root):
        return None, Refusal(shown, "path_escape", f"resolves outside {printable(str(root))}")
    try:
        real = lexical.resolve()
    except (RuntimeError, OSError) as exc:  # RuntimeError: a symlink loop (Python 3.11)
        return None, Refusal(shown, "unreadable", f"cannot resolve it: {exc}")
    if not inside(real, root):
        return None, Refusal(
            shown,
            "symlink_escape",
            f"a symlink points outside {printable(str(root))} (to {printable(str(real))})",
        )
    try:
        regular_size(real, max_bytes)
    except FileRefused as exc:
        return None, Refusal(shown, exc.reason, exc.detail)
    return (lexical, real), None


def demo_items(
    tarball: Path, classes: tuple[str, ...] = DEMO_CLASSES, per_class: int = DEMO_PER_CLASS
) -> list[SourceItem]:
    """The demo set (label = emoji category), in the package's sort order."""
    with tarfile.open(tarball) as tar:
        meta = json.load(tar.extractfile("package/emoji.json"))  # type: ignore[arg-type]
        chosen: dict[str, list[dict]] = {c: [] for c in classes}
        for emoji in sorted(meta, key=lambda e: e["sort_order"]):
            bucket = chosen.get(emoji["category"])
            if bucket is not None and emoji.get("has_img_google") and len(bucket) < per_class:
                bucket.append(emoji)
        wanted = {
            f"package/img/google/64/{e['image']}": (category, e["image"])
            for category, emojis in chosen.items()
            for e in emojis
        }
        # one sequential pass: random access into a .tgz re-decompresses from the start
        found = {}
        for member in tar:
            if member.name in wanted:
                found[member.name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    origin = f"npm:{DEMO_PACKAGE}@{DEMO_VERSION}/"
    return [
        SourceItem(label=label, name=name, origin=origin + member, data=found[member])
        for member, (label, name) in wanted.items()
        if member in found
    ]


def split_layout(top: list[Path]) -> dict[str, str] | None:
    """{folder name: split} when the top-level folders are all named train/val/test (or
    training, valid, validation, dev, testing) and one holds sub-folders: a dataset shipped
    split, root/<split>/<label>/…. None for an ImageFolder tree root/<label>/…."""
    splits = {d.name: SPLIT_FOLDERS.get(d.name.lower()) for d in top}
    if not top or None in splits.values():
        return None

    def holds_folders(folder: Path) -> bool:
        try:
            return any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(folder))
        except OSError:
            return False

    if not any(holds_folders(d) for d in top):
        return None  # labels that happen to be called train/test, holding images
    return splits  # type: ignore[return-value]


def wrapper_folder(root: Path) -> Path | None:
    """The one folder under `root` when it holds nothing but two or more folders: most
    likely the dataset's own folder (an unpacked archive), not a label."""
    try:
        top = [e for e in os.scandir(root) if not e.name.startswith(".")]
        if len(top) != 1 or not top[0].is_dir():
            return None
        inner = [e for e in os.scandir(top[0].path) if not e.name.startswith(".")]
    except OSError:
        return None
    if len(inner) >= 2 and all(e.is_dir() for e in inner):
        return Path(top[0].path)
    return None


def folder_items(
    root: Path, max_bytes: int | None = None
) -> tuple[list[SourceItem], list[Refusal]]:
    """Items of an ImageFolder tree root/<label>/…/<file>; links leaving the root are refused.

    A tree shipped split, root/train|val|test/<label>/…, gives its labels from the level
    below the split folders; each item records its folder's split (`folder_split`) and its
    name starts with the split folder's, so train/cat/1.jpg and test/cat/1.jpg both land.

    Every entry ends as an item or a refusal with a reason (hidden ones are skipped):
    one entry that cannot be read never stops the others.
    """
    if not root.is_dir():
        raise SourceError(f"{printable(str(root))} is not a folder")
    root = root.resolve()
    items: list[SourceItem] = []
    refused: list[Refusal] = []

    def refuse(path: Path | str, reason: str, detail: str) -> None:
        refused.append(Refusal(printable(str(path)), reason, detail))

    def escapes(path: Path) -> bool:
        try:
            return not inside(path.resolve(), root)
        except (RuntimeError, OSError):  # a loop: os.walk does not enter it either
            return False

    def sub_folders(parent: Path) -> list[Path]:
        """Its non-hidden sub-folders; files and links leaving the root are refused."""
        found: list[Path] = []
        try:
            entries = sorted(os.scandir(parent), key=lambda e: e.name)
        except OSError as exc:
            refuse(parent, "unreadable", f"cannot list the folder: {exc.strerror}")
            return found
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if not is_dir:
                refuse(path, "no_label", "not inside a <label>/ sub-folder")
            elif entry.is_symlink() and escapes(path):
                refuse(path, "symlink_escape", "links outside the folder")
            else:
                found.append(path)
        return found

    top = sub_folders(root)
    splits = split_layout(top)
    labels: list[tuple[Path, str | None]] = []
    if splits:  # root/<split>/<label>/…: the labels are one level down
        for split_dir in top:
            labels += [(d, splits[split_dir.name]) for d in sub_folders(split_dir)]
    else:
        labels = [(d, None) for d in top]

    for label_dir, split in labels:
        label = printable(label_dir.name)
        prefix = f"{label_dir.parent.name}__" if split else ""
        extra = ((FOLDER_SPLIT, split),) if split else ()

        def unreadable(exc: OSError) -> None:
            refuse(exc.filename, "unreadable", f"cannot list the folder: {exc.strerror}")

        for folder, dirs, files in os.walk(label_dir, onerror=unreadable):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for d in dirs:  # os.walk does not enter linked folders: say so
                if not (here / d).is_symlink():
                    continue
                if escapes(here / d):
                    refuse(here / d, "symlink_escape", "links outside the folder")
                else:
                    refuse(
                        here / d, "not_a_file", "a link to a folder inside the tree: not followed"
                    )
            for name in sorted(f for f in files if not f.startswith(".")):
                path = here / name
                found, refusal = resolve_within(str(path), root, max_bytes)
                if refusal:
                    refused.append(refusal)
                    continue
                rel = path.relative_to(label_dir).as_posix().replace("/", "__")
                items.append(
                    SourceItem(
                        label=label,
                        name=safe_name(prefix + rel),
                        origin=printable(str(path)),
                        path=found[1],  # type: ignore[index]
                        extra=extra,
                    )
                )
    if not items and not refused:
        raise SourceError(f"{printable(str(root))} holds no files in <label>/<file> sub-folders")
    return items, refused


def read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """A CSV or parquet manifest's columns and rows of Python strings (missing cells are '').

    Bytes that are not UTF-8 are kept as Python keeps them in file names
    (surrogateescape), so a path cell still names its file; other cells are
    made printable by the caller.
    """
    if not path.is_file():
        raise SourceError(f"{printable(str(path))}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(
                path,
                dtype=object,  # pandas' own string type cannot hold those bytes
                keep_default_na=False,
                skipinitialspace=True,
                encoding_errors="surrogateescape",
            )
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        raise SourceError(f"{printable(str(path))}: cannot read it as CSV/parquet: {exc}") from exc
    columns = [printable(str(c)).strip() for c in frame.columns]

    def cell(value: object) -> str:
        if isinstance(value, bytes):  # a binary parquet column: bytes as file names hold them
            return os.fsdecode(value)
        missing = value is None or value is pd.NA or value is pd.NaT
        return "" if missing or (isinstance(value, float) and math.isnan(value)) else str(value)

    # plain Python rows: pandas' string columns would re-encode, and fail on those bytes
    rows = [
        dict(zip(columns, map(cell, values), strict=True))
        for values in frame.itertuples(index=False)
    ]
    return columns, rows


def manifest_items(
    path: Path,
    max_bytes: int | None = None,
    label_sep: str = " ",
    label_columns: list[str] | None = None,
    allow_empty: bool = False,
) -> tuple[list[SourceItem], list[Refusal]]:
    """Rows of a manifest with `label` and `path` and/or `url`; other columns ride along.

    Multi-label: a `labels` column holds each image's set, separated by `label_sep`
    (" " "|" ";" ","), or `label_columns` name one-hot columns, one per label (0/1,
    true/false, yes/no); a row with no label is refused (no_label) unless `allow_empty`.

    A `split` column (train/val/test, or the names split_layout knows) is the dataset's own
    split: it is recorded as `folder_split`, as for a tree shipped split.

    Relative paths resolve against the manifest's folder, which is also the root
    that no path may leave.
    """
    if label_sep not in LABEL_SEPARATORS:
        raise SourceError(
            f"label separator {label_sep!r}: use one of {', '.join(map(repr, LABEL_SEPARATORS))}"
        )
    names, rows = read_table(path)
    shown = printable(str(path))
    if "split" in names and FOLDER_SPLIT not in names:  # the dataset's own split, as a tree's
        names = [FOLDER_SPLIT if c == "split" else c for c in names]
        for row in rows:
            row[FOLDER_SPLIT] = SPLIT_FOLDERS.get(row.pop("split").strip().lower(), "")
    columns = set(names)
    read_labels, label_cols = _label_reader(shown, columns, label_sep, label_columns or [])
    if not label_cols or not columns & {"path", "url"}:
        raise SourceError(
            f"{shown}: needs a 'label' column and a 'path' or 'url' column "
            f"(found: {', '.join(names) or 'none'}); a multi-label manifest has a 'labels' "
            "column instead, or names its 0/1 columns with --label-columns"
        )
    extra_cols = [c for c in names if c not in ("path", "url", "label") and c not in label_cols]
    clashing = [c for c in extra_cols if c in RESERVED_COLUMNS or not c]
    if clashing:
        raise SourceError(f"{shown}: column name(s) {clashing} are reserved by visiontune: rename")
    root = path.resolve().parent
    items: list[SourceItem] = []
    refused: list[Refusal] = []
    for row in rows:
        where = (row.get("path") or "").strip()
        url = encoded_url((row.get("url") or "").strip())
        extra = tuple((c, printable(row[c])) for c in extra_cols)
        if not where and not url:
            refused.append(Refusal(f"{shown} row", "missing", "neither path nor url is set"))
            continue
        source = printable(where) or mask_url(url)  # shown and recorded: no password
        labelled, refusal = read_labels(row, source, allow_empty)
        if refusal:
            refused.append(refusal)
            continue
        if where:
            found, refusal = resolve_within(where, root, max_bytes)
            if refusal:
                refused.append(refusal)
                continue
            lexical, real = found  # type: ignore[misc]
            rel = lexical.relative_to(root).as_posix().replace("/", "__")
            items.append(
                SourceItem(name=safe_name(rel), origin=source, path=real, extra=extra, **labelled)
            )
        else:
            refusal = check_url(url)
            if refusal:
                refused.append(refusal)
                continue
            items.append(
                SourceItem(name=url_name(url), origin=source, url=url, extra=extra, **labelled)
            )
    return items, refused


def split_labels(cell: str, sep: str) -> list[str]:
    """The labels of a manifest's `labels` cell: split on `sep` (" ": any whitespace), each
    stripped, empty ones dropped ('a||b' is a and b)."""
    text = printable(cell)
    parts = text.split() if sep == " " else text.split(sep)
    return [p.strip() for p in parts if p.strip()]


LabelReader = Callable[[dict[str, str], str, bool], tuple[dict[str, Any], "Refusal | None"]]


def _label_reader(
    shown: str, columns: set[str], sep: str, one_hot: list[str]
) -> tuple[LabelReader, set[str]]:
    """How a manifest's rows give their labels, and the columns that hold them.

    (row, source, allow_empty) → ({"label": …} or {"label": "", "labels": …} for SourceItem,
    or a refusal). No label column at all gives an empty set of columns.
    """
    if "label" in columns and "labels" in columns:
        raise SourceError(
            f"{shown}: has both a 'label' column (one label per image) and a 'labels' column "
            "(a set of labels per image): keep one"
        )
    if one_hot:
        held = sorted(columns & {"label", "labels"})
        missing = [c for c in one_hot if c not in columns]
        taken = [c for c in one_hot if c in ("path", "url", FOLDER_SPLIT)]
        if held or missing or taken:
            why = (
                f"it has a {held[0]!r} column: drop it or --label-columns"
                if held
                else f"no column(s) {missing}"
                if missing
                else f"{taken} are not label columns"
            )
            raise SourceError(f"{shown}: --label-columns {','.join(one_hot)}: {why}")

        def from_columns(row: dict[str, str], source: str, allow_empty: bool):
            chosen = []
            for column in one_hot:
                value = row[column].strip().lower()
                if value not in ONE_HOT:
                    detail = f"{printable(row[column])!r} in column {column!r} is not 0/1"
                    detail += ", true/false or yes/no"
                    return {}, Refusal(source, "bad_label_value", detail)
                if ONE_HOT[value]:
                    chosen.append(printable(column).strip())
            return _label_set(chosen, source, allow_empty, "no label column is set")

        return from_columns, set(one_hot)
    if "labels" in columns:

        def from_cell(row: dict[str, str], source: str, allow_empty: bool):
            return _label_set(
                split_labels(row["labels"], sep), source, allow_empty, "the labels cell is empty"
            )

        return from_cell, {"labels"}
    if "label" in columns:

        def from_label(row: dict[str, str], source: str, allow_empty: bool):
            label = printable(row["label"]).strip()
            if not label:
                return {}, Refusal(source, "no_label", "the label cell is empty")
            return {"label": label}, None

        return from_label, {"label"}
    return (lambda row, source, allow_empty: ({}, None)), set()


def _label_set(names: list[str], source: str, allow_empty: bool, empty: str):
    if not names and not allow_empty:
        return {}, Refusal(source, "no_label", f"{empty} (--allow-empty keeps such images)")
    return {"label": "", "labels": label_set(names)}, None


def url_list_items(path: Path, default_label: str = "") -> tuple[list[SourceItem], list[Refusal]]:
    """A text file of `URL [LABEL]` lines ('#' comments, blank lines skipped)."""
    if not path.is_file():
        raise SourceError(f"{printable(str(path))}: file not found")
    items: list[SourceItem] = []
    refused: list[Refusal] = []
    for line in path.read_text(errors="surrogateescape").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        url, *rest = re.split(r"\s+", line, maxsplit=1)
        url = encoded_url(url)
        label = printable(rest[0]).strip() if rest else default_label
        shown = mask_url(url)  # what is printed and recorded in data/sources.csv
        refusal = check_url(url)
        if refusal:
            refused.append(refusal)
        elif not label:
            refused.append(Refusal(shown, "no_label", "no label on the line and no --label given"))
        else:
            items.append(SourceItem(label, url_name(url), shown, url=url))
    return items, refused
