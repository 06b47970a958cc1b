"""The tests' multi-label set (tests/multilabel_data.py): real emoji, 6 keyword labels."""

from __future__ import annotations

from collections import Counter

import pandas as pd
from PIL import Image

from tests.multilabel_data import emoji_tags


def test_emoji_tags_is_a_small_deterministic_multi_label_manifest(tmp_path):
    csv = emoji_tags(tmp_path / "a")
    assert csv == tmp_path / "a" / "tags.csv"
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    assert list(frame.columns) == ["path", "labels"]
    assert len(frame) == 60 and frame["path"].is_unique  # 6 labels x 10
    sets = [cell.split(" ") for cell in frame["labels"]]
    assert all(1 <= len(labels) <= 3 and labels == sorted(set(labels)) for labels in sets)
    counts = Counter(label for labels in sets for label in labels)
    assert set(counts) == {"animal", "face", "female", "flag", "male", "nature"}
    assert min(counts.values()) >= 10
    assert sum(len(labels) > 1 for labels in sets) >= 10  # truly multi-label

    # every row names a real 64x64 emoji next to the csv, and nothing else is there
    assert sorted(p.name for p in (csv.parent / "images").iterdir()) == sorted(
        path.removeprefix("images/") for path in frame["path"]
    )
    for path in frame["path"]:
        with Image.open(csv.parent / path) as img:
            img.load()
            assert img.size == (64, 64)

    # the same rows and bytes again
    again = emoji_tags(tmp_path / "b")
    assert again.read_text() == csv.read_text()
    first = frame["path"].iloc[0]
    assert (again.parent / first).read_bytes() == (csv.parent / first).read_bytes()
