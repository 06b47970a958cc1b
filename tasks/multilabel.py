"""Multi-label data: the canonical label-set string that data/sources.csv, the clean manifest and
the split table carry in their `labels` column (safe names, sorted, unique, space-joined; "" is
the empty set)."""

from __future__ import annotations

from collections.abc import Iterable


def split_set(cell: str) -> list[str]:
    """The labels of a canonical set string ("" → [])."""
    return cell.split() if cell else []


def join_set(labels: Iterable[str]) -> str:
    """The canonical string of a set of safe names: sorted, unique, space-joined."""
    return " ".join(sorted(set(labels)))
