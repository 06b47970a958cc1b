"""The clean stage: every rejection reason, RGB conversion, near-duplicates, the cache."""

import hashlib
import json
import os
import random
import shutil
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from params import CleanParams
from tasks.clean import clean_dataset, clean_one, hash_files, list_raw_images
from tasks.clean_cache import CACHE_INDEX, prepare
from tasks.clean_manifest import class_table, imbalance_warning, write_manifest
from tasks.clean_rules import REASONS
from tasks.decode import RejectedImage, decode
from tasks.duplicates import near_duplicate_components
from tasks.shards import ShardReader
from tests.images import (
    CLASSES,
    fifo_watch,
    hostile_images,
    image_bytes,
    rotated_jpeg_bytes,
    shape_image,
    write_bad_corpus,
    write_convertible_modes,
    write_image_folder,
    write_unreadable_entries,
)

BAD_CORPUS_PARAMS = CleanParams(
    max_side=32, max_pixels=200_000, classes=list(CLASSES), near_duplicates="keep_one"
)


def test_every_rejection_reason_is_recorded_and_nothing_crashes(tmp_path):
    data = tmp_path / "data"
    good = write_image_folder(data, per_class=4)
    expected = write_bad_corpus(data) | write_unreadable_entries(data)
    assert set(expected.values()) == set(REASONS)  # the corpus covers every reason

    out = tmp_path / "clean"
    with fifo_watch(data) as opened:  # a FIFO opened for reading would block clean forever
        result = clean_dataset(data, out, BAD_CORPUS_PARAMS)
        records, rejected = result.records, result.rejected
    assert opened == []
    manifest = write_manifest(records, rejected, out)

    assert {r.path: r.reason for r in rejected} == expected
    on_disk = pd.read_csv(out / "rejected.csv")
    assert dict(zip(on_disk["path"], on_disk["reason"], strict=True)) == expected
    assert on_disk["detail"].str.len().gt(0).all()
    kept = {f"{p.parent.name}/{p.name}" for p in good} | {"square/a_original.png"}
    assert set(manifest["path"]) == kept
    assert manifest["sha256"].is_unique
    reader = ShardReader(out)
    for row in manifest.itertuples():
        cached = reader.image(row.sha256)
        assert cached.dtype == "uint8" and cached.shape[2] == 3 and max(cached.shape) <= 32
    # the cache holds exactly the kept images: nothing of a rejected file is left
    assert set(reader.locations) == set(manifest["sha256"])
    assert pd.read_parquet(out / "manifest.parquet").equals(manifest)


def test_modes_are_converted_to_rgb_and_exif_orientation_applied(tmp_path):
    data = tmp_path / "data"
    modes = write_convertible_modes(data)
    (data / "square" / "rotated.jpg").write_bytes(rotated_jpeg_bytes())
    out = tmp_path / "clean"
    result = clean_dataset(data, out, CleanParams(near_duplicates="off"))
    records, rejected = result.records, result.rejected
    assert rejected == []
    by_path = {r.path: r for r in records}
    assert {p: by_path[p].mode for p in modes} == modes

    reader = ShardReader(out)

    def pixel(path: str) -> tuple[int, ...]:
        return tuple(int(v) for v in reader.image(by_path[path].sha256)[5, 5])

    assert pixel("square/rgba.png") == (255, 255, 255)  # transparent → background
    assert pixel("square/la.png") == (255, 255, 255)
    assert pixel("square/palette_transparent.png") == (255, 255, 255)
    assert pixel("square/sixteen.png") == (128, 128, 128)  # 16-bit scaled, not clipped
    red, green, blue = pixel("square/cmyk.jpg")
    assert red > 200 and green < 60 and blue < 60
    rotated = by_path["square/rotated.jpg"]
    assert (rotated.width, rotated.height) == (20, 40)  # EXIF orientation applied


def test_a_real_decompression_bomb_is_refused_before_decoding():
    """A 10000x10000 bilevel PNG is a few KB on disk but 100M pixels (> Pillow's 89M)."""
    bomb = image_bytes(Image.new("1", (10000, 10000)))
    assert len(bomb) < 100_000
    with pytest.raises(RejectedImage) as err:
        decode(bomb, (255, 255, 255), CleanParams().max_pixels)
    assert err.value.reason == "decompression_bomb"


def test_near_duplicates_are_grouped_by_default(tmp_path):
    data = tmp_path / "data"
    write_bad_corpus(data)
    result = clean_dataset(
        data, tmp_path / "clean", CleanParams(max_pixels=200_000, classes=list(CLASSES))
    )
    records, rejected = result.records, result.rejected
    by_path = {r.path: r for r in records}
    original, reencoded = by_path["square/a_original.png"], by_path["square/c_reencoded.jpg"]
    assert original.dup_group == reencoded.dup_group == min(original.sha256, reencoded.sha256)
    assert "near_duplicate" not in {r.reason for r in rejected}
    alone = [
        r for r in records if r.path not in ("square/a_original.png", "square/c_reencoded.jpg")
    ]
    assert all(r.dup_group == r.sha256 for r in alone)


def test_near_duplicate_components_are_transitive():
    base = 0x0F0F0F0F0F0F0F0F
    hashes = [
        f"{base:016x}",
        f"{base ^ 0b111:016x}",
        f"{base ^ 0b111111:016x}",
        f"{~base & (2**64 - 1):016x}",
    ]
    groups = near_duplicate_components(hashes, threshold=3)
    assert groups[0] == groups[1] == groups[2] != groups[3]
    assert len(set(near_duplicate_components(hashes, threshold=0))) == 4


def test_incremental_clean_decodes_only_new_files_and_equals_a_full_run(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, per_class=20)
    write_bad_corpus(data)
    params = CleanParams(max_side=32, max_pixels=200_000)
    out = tmp_path / "incremental"
    first = clean_dataset(data, out, params)
    assert len(first.processed) == len({p for p, _ in list_raw_images(data)}) - 2  # 2 exact copies

    again = clean_dataset(data, out, params)
    assert again.processed == []

    added = write_image_folder(data, per_class=1, seed=9)
    (data / "circle" / "copy_of_new.png").write_bytes(added[0].read_bytes())  # same content
    third = clean_dataset(data, out, params)
    assert sorted(third.processed) == sorted(f"{p.parent.name}/{p.name}" for p in added)

    full_out = tmp_path / "full"
    full = clean_dataset(data, full_out, params)
    assert [asdict(r) for r in third.records] == [asdict(r) for r in full.records]
    assert third.rejected == full.rejected
    assert_same_cache(out, full_out)


def assert_same_cache(out, full_out):
    """What a full run writes: the same index and every image's pixels (shards may differ)."""
    assert pd.read_parquet(out / CACHE_INDEX).equals(pd.read_parquet(full_out / CACHE_INDEX))
    mine, full = ShardReader(out), ShardReader(full_out)
    assert sorted(mine.locations) == sorted(full.locations)
    for sha in full.locations:
        assert (mine.image(sha) == full.image(sha)).all(), sha


def test_filter_params_reuse_the_cache_and_decode_params_invalidate_it(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, per_class=5)
    Image.new("RGB", (6, 6)).save(data / "circle" / "small.png")
    out = tmp_path / "clean"
    first = clean_dataset(data, out, CleanParams(max_side=32, min_side=8))
    assert "circle/small.png" in {r.path for r in first.rejected}
    small_sha = hashlib.sha256((data / "circle" / "small.png").read_bytes()).hexdigest()
    assert small_sha not in ShardReader(out)  # rejected: its pixels are not stored

    # lowering min_side keeps small.png: only its cache file (pruned when it was rejected) is made
    second = clean_dataset(data, out, CleanParams(max_side=32, min_side=4))
    assert second.processed == ["circle/small.png"]
    assert "circle/small.png" in {r.path for r in second.records}

    # a new max_side changes every cached image: everything is decoded again
    third = clean_dataset(data, out, CleanParams(max_side=24, min_side=4))
    assert len(third.processed) == 16
    reader = ShardReader(out)
    for rec in third.records:
        assert max(reader.image(rec.sha256).shape) <= 24


def test_a_deleted_raw_file_leaves_no_trace_in_the_cache(tmp_path):
    data = tmp_path / "data"
    paths = write_image_folder(data, per_class=3)
    out = tmp_path / "clean"
    clean_dataset(data, out, CleanParams())
    paths[0].unlink()
    result = clean_dataset(data, out, CleanParams())
    assert len(pd.read_parquet(out / CACHE_INDEX)) == len(result.records) == 8
    assert len(ShardReader(out).locations) == 8


def test_sources_columns_ride_into_the_manifest(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, per_class=2, classes=("circle",))
    (data / "sources.csv").write_text(
        "path,label,source,sha256,group\ncircle/circle_0_000.jpg,Circle!,/src/a.jpg,x,subject-1\n"
    )
    result = clean_dataset(data, tmp_path / "clean", CleanParams())
    records, rejected = result.records, result.rejected
    manifest = write_manifest(records, rejected, tmp_path / "clean", data)
    rows = manifest.set_index("path")
    assert rows.loc["circle/circle_0_000.jpg", "group"] == "subject-1"
    assert rows.loc["circle/circle_0_000.jpg", "original_label"] == "Circle!"
    assert rows.loc["circle/circle_0_001.png", "group"] == ""
    assert rows.loc["circle/circle_0_000.jpg", "sha256"] != "x"  # clean's own hash wins


def test_class_summary_and_imbalance_warning(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, per_class=12, classes=("big",))
    write_image_folder(data, per_class=3, classes=("small",), seed=1)
    (data / "small" / "broken.png").write_bytes(b"")
    result = clean_dataset(data, tmp_path / "clean", CleanParams())
    table = class_table(result).set_index("label")
    assert table.loc["small"].tolist() == [4, 3, 1]
    assert table.loc["big"].tolist() == [12, 12, 0]
    warning = imbalance_warning(table.reset_index(), ratio=3.0)
    assert warning and "big" in warning and "small" in warning
    assert imbalance_warning(table.reset_index(), ratio=5.0) is None


def test_list_raw_images_ignores_hidden_and_top_level_files(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"x")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "cat" / ".a.png.x1y2.tmp").write_bytes(b"x")
    (tmp_path / "loose.png").write_bytes(b"x")
    (tmp_path / "sources.csv").write_text("path\n")
    assert list_raw_images(tmp_path) == [("cat/a.png", "cat")]


def test_clean_of_a_copied_image_under_another_name_is_a_duplicate(tmp_path):
    data = tmp_path / "data"
    img = shape_image("circle", random.Random(3))
    (data / "circle").mkdir(parents=True)
    img.save(data / "circle" / "b.png")
    shutil.copy(data / "circle" / "b.png", data / "circle" / "a.png")
    result = clean_dataset(data, tmp_path / "clean", CleanParams())
    records, rejected = result.records, result.rejected
    assert [r.path for r in records] == ["circle/a.png"]
    assert [(r.path, r.reason, r.detail) for r in rejected] == [
        ("circle/b.png", "duplicate", "same bytes as circle/a.png")
    ]


def test_clean_one_gives_the_cached_pixels(tmp_path):
    """clean_one decodes a single file as the stage does: the same pixels training saw."""
    from tasks.clean import clean_one

    data = tmp_path / "data"
    write_convertible_modes(data)
    (data / "square" / "rotated.jpg").write_bytes(rotated_jpeg_bytes())
    params = CleanParams(max_side=16, near_duplicates="off")
    records = clean_dataset(data, tmp_path / "clean", params).records
    reader = ShardReader(tmp_path / "clean")
    for rec in records:
        image, size = clean_one((data / rec.path).read_bytes(), params)
        assert size == (rec.width, rec.height)
        assert (np.asarray(image) == reader.image(rec.sha256)).all(), rec.path
    with pytest.raises(RejectedImage) as err:
        clean_one(image_bytes(Image.new("RGB", (4, 4))), params)
    assert err.value.reason == "too_small"


def test_formats_and_modes_pillow_half_supports(tmp_path):
    """Multi-frame files give their first frame (red); the rest is kept or has a reason."""
    for name, (raw, reason) in hostile_images().items():
        try:
            decoded = decode(raw, (255, 255, 255), CleanParams().max_pixels)
        except RejectedImage as exc:
            assert (name, exc.reason) == (name, reason)
            assert exc.detail
            continue
        assert (name, "") == (name, reason)
        assert decoded.image.mode == "RGB"
        if name.startswith(("anim.", "pages.", "red.")):
            red, green, blue = decoded.image.getpixel((12, 12))
            assert red > 200 and green < 40 and blue < 40, name


def test_hashing_streams_a_large_file(tmp_path):
    """A big file is hashed in chunks: memory stays far below its size."""
    import tracemalloc

    data = tmp_path / "data"
    (data / "circle").mkdir(parents=True)
    with (data / "circle" / "big.bin").open("wb") as fh:
        fh.truncate(64 * 2**20)  # sparse: 64 MiB of zeros that cost no disk
    tracemalloc.start()
    try:
        digests, rejected = hash_files(data, ["circle/big.bin"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert rejected == []
    assert digests["circle/big.bin"] == (hashlib.sha256(bytes(64 * 2**20)).hexdigest(), 64 * 2**20)
    assert peak < 8 * 2**20


def test_files_that_vanish_or_change_kind_before_hashing(tmp_path):
    """data/ changing while clean runs: what was listed but is gone or no longer a file
    is rejected with a reason, the rest is cleaned."""
    data = tmp_path / "data"
    write_image_folder(data, per_class=3, classes=("circle",))
    listed = [rel for rel, _ in list_raw_images(data)]
    (data / listed[0]).unlink()
    (data / listed[1]).unlink()
    os.mkfifo(data / listed[1])
    with fifo_watch(data) as opened:
        digests, rejected = hash_files(data, listed)
    assert opened == []
    assert [(r.path, r.reason) for r in rejected] == [
        (listed[0], "missing"),
        (listed[1], "not_a_file"),
    ]
    assert list(digests) == [listed[2]]


def test_a_large_jpeg_is_decoded_at_a_reduced_scale_like_a_full_decode():
    """A phone-sized photo: the DCT-domain reduction gives the cache nearly the pixels of a
    full decode, the recorded size stays the upright full size, and truncation still fails."""
    from skimage import data as samples

    photo = Image.fromarray(samples.astronaut()).resize((2000, 1500), Image.Resampling.BICUBIC)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° CW: upright it is 1500 × 2000
    raw = image_bytes(photo, "JPEG", quality=90, exif=exif)
    params = CleanParams()
    reduced = decode(raw, (255, 255, 255), params.max_pixels, params.max_side)
    full = decode(raw, (255, 255, 255), params.max_pixels)
    assert reduced.size == full.size == full.image.size == (1500, 2000)
    assert max(reduced.image.size) < max(full.image.size) / 2  # it was reduced
    assert min(reduced.image.size) >= 2 * params.max_side
    small, large = (np.asarray(prepare(d, params.max_side), dtype=float) for d in (reduced, full))
    assert small.shape == large.shape == (params.max_side, params.max_side * 3 // 4, 3)
    assert np.abs(small - large).mean() < 2  # of 255

    image, size = clean_one(raw, params)
    assert size == (1500, 2000) and image.size == (96, 128)
    with pytest.raises(RejectedImage) as err:
        decode(raw[: len(raw) // 2], (255, 255, 255), params.max_pixels, params.max_side)
    assert err.value.reason == "corrupt"


def _multi_label_data(data, sets: dict[str, str | None], same: dict[str, str] | None = None):
    """data/_images/<name> (a distinct real image each, or the bytes of `same[name]`), their sets
    in sources.csv (None: no row) with the user's names upper-cased, and task.json."""
    from tasks.collect import write_task

    (data / "_images").mkdir(parents=True)
    rows = []
    for i, (name, labels) in enumerate(sets.items()):
        source = (same or {}).get(name)
        if source:
            (data / "_images" / name).write_bytes((data / "_images" / source).read_bytes())
        else:
            img = shape_image(CLASSES[i % 3], random.Random(40 + i))
            (data / "_images" / name).write_bytes(image_bytes(img))
        if labels is not None:
            names = [lb.upper() for lb in labels.split()]
            rows.append({"path": f"_images/{name}", "labels": labels, "source": f"/src/{name}"})
            rows[-1]["original_labels"] = json.dumps(names)
    pd.DataFrame(rows).to_csv(data / "sources.csv", index=False)
    write_task(data, "multi_label", allow_empty=False)


def test_multi_label_data_is_cleaned_into_a_labels_manifest(tmp_path):
    from tasks.label_task import MultiLabel
    from tasks.label_task import task_of_data as label_kind

    data = tmp_path / "data"
    sets = {
        "a.png": "beach dog",
        "b.png": "beach dog",  # a's bytes, the same set: a duplicate
        "c.png": "dog",
        "d.png": "beach",  # c's bytes, another set: both are label conflicts
        "e.png": None,  # no row in sources.csv
        "f.png": "",  # the empty set, not allowed
        "g.png": "cat",  # only a label `classes` leaves out
        "h.png": "cat dog",  # keeps dog
    }
    _multi_label_data(data, sets, same={"b.png": "a.png", "d.png": "c.png"})
    (data / "stray").mkdir()
    (data / "stray" / "x.png").write_bytes(image_bytes(shape_image("circle", random.Random(1))))
    assert label_kind(data) == MultiLabel(allow_empty=False)
    out = tmp_path / "clean"
    params = CleanParams(near_duplicates="off", classes=["Beach", "dog", "sunset"])
    result = clean_dataset(data, out, params)
    assert {r.path: r.reason for r in result.rejected} == {
        "_images/b.png": "duplicate",
        "_images/c.png": "label_conflict",
        "_images/d.png": "label_conflict",
        "_images/e.png": "no_label",
        "_images/f.png": "no_label",
        "_images/g.png": "label_not_allowed",
        "stray/x.png": "no_label",
    }
    details = {r.path: r.detail for r in result.rejected}
    assert details["_images/c.png"] == "the same image is also labelled ['beach']"
    manifest = write_manifest(result.records, result.rejected, out, data)
    assert list(manifest.columns) == [
        "path",
        "labels",
        "sha256",
        "bytes",
        "width",
        "height",
        "phash",
        "mode",
        "dup_group",
        "original_labels",
        "source",
    ]
    assert dict(zip(manifest["path"], manifest["labels"], strict=True)) == {
        "_images/a.png": "beach dog",
        "_images/h.png": "dog",
    }
    originals = dict(zip(manifest["path"], manifest["original_labels"], strict=True))
    assert json.loads(originals["_images/h.png"]) == ["DOG"]  # cat left out with its name
    assert json.loads(originals["_images/a.png"]) == ["BEACH", "DOG"]
    assert pd.read_parquet(out / "manifest.parquet").equals(manifest)

    table = class_table(result).set_index("label")
    assert table.loc["dog"].tolist() == [4, 2, 2]  # raw a b c h, kept a h
    assert table.loc["beach"].tolist() == [3, 1, 2]
    assert table.loc["cat"].tolist() == [2, 0, 2]
    warnings = result.kind.warnings(class_table(result))
    assert len(warnings) == 1 and "rare label(s): beach 1, dog 2" in warnings[0]


def test_multi_label_empty_sets_kept_when_allowed_and_rare_labels_warned(tmp_path):
    from tasks.collect import write_task
    from tasks.label_task import RARE_LABEL

    data = tmp_path / "data"
    sets = {f"{i:02d}.png": "dog" for i in range(RARE_LABEL)}
    sets |= {"beach.png": "beach dog", "none.png": "", "cat.png": "cat"}
    _multi_label_data(data, sets)
    write_task(data, "multi_label", allow_empty=True)
    params = CleanParams(near_duplicates="off", classes=["dog", "beach"])
    result = clean_dataset(data, tmp_path / "clean", params)
    assert result.rejected == []
    manifest = write_manifest(result.records, result.rejected, tmp_path / "clean", data)
    labels = manifest.set_index("path")["labels"]
    assert labels["_images/none.png"] == "" and labels["_images/cat.png"] == ""  # emptied
    assert labels["_images/beach.png"] == "beach dog"
    table = class_table(result).set_index("label")
    assert table.loc["dog", "kept"] == RARE_LABEL + 1 and table.loc["beach", "kept"] == 1
    warnings = result.kind.warnings(class_table(result))
    assert len(warnings) == 1 and "beach 1" in warnings[0] and "dog" not in warnings[0]
