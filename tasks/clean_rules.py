"""The clean stage's rules: which files are rejected, and why (one table of reasons).

Per-file rules read one decoded result (tasks/clean_cache.py's CacheEntry);
the across-file rules (label conflicts, duplicates, near-duplicates, classes)
compare them all. `apply_rules` is a pure function of the decoded results, so
a run from the cache gives exactly what a full run gives.
"""

from __future__ import annotations

from dataclasses import dataclass

from params import CleanParams
from tasks.clean_cache import CacheEntry
from tasks.duplicates import near_duplicate_components
from tasks.label_task import SingleLabel
from tasks.sources import safe_label

UNDECODABLE = "the file name is not valid UTF-8: rename it, or collect it (collect renames it)"
# Every rejection reason, in the order the rules apply (README has the same table).
REASONS = {
    "bad_name": "the file name is not valid UTF-8",
    "missing": "the file disappeared, or is a symlink to nothing",
    "not_a_file": "a FIFO, socket, device or folder, never opened",
    "unreadable": "cannot be opened (permission denied, a symlink loop, an I/O error)",
    "label_not_allowed": "the label is not in clean.yaml `classes`",
    "empty": "zero-byte file",
    "not_an_image": "Pillow cannot identify the format",
    "corrupt": "truncated or undecodable (the file is fully decoded)",
    "decompression_bomb": "more pixels than `max_pixels` (checked before decoding)",
    "unsupported_mode": "a pixel mode with no defined RGB rendering (e.g. 32-bit float)",
    "too_small": "shorter side under `min_side`",
    "aspect_ratio": "longest / shortest side over `max_aspect_ratio`",
    "label_conflict": "the same bytes under two or more labels: every copy is rejected",
    "duplicate": "the same bytes as an earlier path of the same label (first path kept)",
    "near_duplicate": "pHash within `phash_threshold` of a kept image (near_duplicates: keep_one)",
}


@dataclass
class CleanRecord:
    path: str  # relative to data/, posix
    label: str
    sha256: str
    bytes: int
    width: int  # upright size before resizing
    height: int
    phash: str
    mode: str = ""  # the file's own pixel mode before conversion to RGB
    dup_group: str = ""  # the smallest sha256 of its near-duplicate group (its own if none)


@dataclass
class Rejection:
    path: str
    reason: str
    detail: str


def size_problem(width: int, height: int, params: CleanParams) -> tuple[str, str] | None:
    """(reason, detail) of the size rule an upright width × height image breaks, else None."""
    if min(width, height) < params.min_side:
        return "too_small", f"{width}x{height} < {params.min_side}px side"
    if max(width, height) / min(width, height) > params.max_aspect_ratio:
        return (
            "aspect_ratio",
            f"{width}x{height} is more elongated than {params.max_aspect_ratio:g}:1",
        )
    return None


def fits(entry: CacheEntry, params: CleanParams) -> bool:
    """Usable under the per-file rules: only such images are worth storing."""
    return not entry.reason and size_problem(entry.width, entry.height, params) is None


def allowed_labels(params: CleanParams) -> set[str] | None:
    if params.classes is None:
        return None
    return set(params.classes) | {safe_label(c) for c in params.classes}


def apply_rules(
    files: list[tuple[str, str]],
    digests: dict[str, tuple[str, int]],
    index: dict[str, CacheEntry],
    params: CleanParams,
    kind: SingleLabel = SingleLabel(),
) -> tuple[list[CleanRecord], list[Rejection]]:
    """The per-file and across-file rules, on decoded results: same input, same output.

    A label is one string per file: multi-label data's is its canonical set (`kind`)."""
    rejected: list[Rejection] = []
    allowed = allowed_labels(params)
    candidates: list[tuple[str, str, CacheEntry]] = []
    for rel, raw_label in files:
        entry = index[digests[rel][0]]
        label, not_allowed = kind.screen(raw_label, allowed)
        if not_allowed:
            rejected.append(Rejection(rel, "label_not_allowed", not_allowed))
        elif entry.reason:
            rejected.append(Rejection(rel, entry.reason, entry.detail))
        elif problem := size_problem(entry.width, entry.height, params):
            rejected.append(Rejection(rel, *problem))
        else:
            candidates.append((rel, label, entry))

    labels_of: dict[str, set[str]] = {}
    for _, label, entry in candidates:
        labels_of.setdefault(entry.sha256, set()).add(label)
    kept: list[tuple[str, str, CacheEntry]] = []
    first_path: dict[str, str] = {}
    for rel, label, entry in candidates:
        labels = labels_of[entry.sha256]
        if len(labels) > 1:
            others = sorted(labels - {label})
            rejected.append(
                Rejection(rel, "label_conflict", f"the same image is also labelled {others}")
            )
        elif entry.sha256 in first_path:
            rejected.append(
                Rejection(rel, "duplicate", f"same bytes as {first_path[entry.sha256]}")
            )
        else:
            first_path[entry.sha256] = rel
            kept.append((rel, label, entry))

    groups = [entry.sha256 for _, _, entry in kept]
    if params.near_duplicates != "off" and kept:
        component = near_duplicate_components(
            [entry.phash for _, _, entry in kept], params.phash_threshold
        )
        members: dict[int, list[int]] = {}
        for i, c in enumerate(component):
            members.setdefault(int(c), []).append(i)
        drop: set[int] = set()
        for group in members.values():
            if len(group) < 2:
                continue
            if params.near_duplicates == "keep_one":
                keeper = kept[group[0]][0]  # kept is in path order
                for i in group[1:]:
                    drop.add(i)
                    rejected.append(
                        Rejection(
                            kept[i][0],
                            "near_duplicate",
                            f"looks like {keeper} (pHash within {params.phash_threshold} bits)",
                        )
                    )
            else:
                smallest = min(kept[i][2].sha256 for i in group)
                for i in group:
                    groups[i] = smallest
        kept = [k for i, k in enumerate(kept) if i not in drop]
        groups = [g for i, g in enumerate(groups) if i not in drop]

    records = [
        CleanRecord(
            path=rel,
            label=label,
            sha256=entry.sha256,
            bytes=digests[rel][1],
            width=entry.width,
            height=entry.height,
            phash=entry.phash,
            mode=entry.mode,
            dup_group=group,
        )
        for (rel, label, entry), group in zip(kept, groups, strict=True)
    ]
    rejected.sort(key=lambda r: r.path)
    return records, rejected
