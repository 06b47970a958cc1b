"""The sharded training cache: append, garbage and compaction, corruption, crash leftovers."""

import os
import time

import numpy as np
import pytest

from params import CleanParams
from tasks.clean import clean_dataset
from tasks.shards import (
    INDEX,
    MAX_SMALL,
    SHARDS,
    ShardError,
    ShardReader,
    load_checks,
    read_locations,
)
from tests.images import write_image_folder
from tests.test_clean import assert_same_cache

PARAMS = CleanParams(max_side=32, near_duplicates="off")


def _shards(out):
    return {p.name: p.read_bytes() for p in (out / SHARDS).iterdir() if p.name != INDEX}


def _garbage(out) -> float:
    live = sum(loc.nbytes for loc in read_locations(out))
    stored = sum(len(b) - 128 for b in _shards(out).values())  # minus each .npy header
    return 1 - live / stored


def _full_run(data, tmp_path):
    full = tmp_path / "full"
    clean_dataset(data, full, PARAMS)
    return full


def test_added_images_go_to_a_new_shard_and_old_shards_stay_untouched(tmp_path):
    data, out = tmp_path / "data", tmp_path / "clean"
    write_image_folder(data, per_class=10)
    clean_dataset(data, out, PARAMS)
    before = _shards(out)
    assert len(before) == 1  # 30 images: one shard

    added = write_image_folder(data, per_class=1, seed=5)
    result = clean_dataset(data, out, PARAMS)
    assert sorted(result.processed) == sorted(f"{p.parent.name}/{p.name}" for p in added)
    after = _shards(out)
    assert len(after) == 2
    assert all(after[name] == blob for name, blob in before.items())  # written once, never again
    (new,) = set(after) - set(before)
    assert {loc.sha256 for loc in read_locations(out) if loc.shard == new} == {
        r.sha256 for r in result.records if r.path in result.processed
    }
    assert_same_cache(out, _full_run(data, tmp_path))


def test_deletions_leave_garbage_that_is_compacted_past_the_threshold(tmp_path):
    data, out = tmp_path / "data", tmp_path / "clean"
    paths = write_image_folder(data, per_class=10)
    clean_dataset(data, out, PARAMS)
    (shard,) = _shards(out)

    for path in paths[:3]:  # 10 %: kept as garbage, the shard is not rewritten
        path.unlink()
    result = clean_dataset(data, out, PARAMS)
    assert result.processed == [] and set(_shards(out)) == {shard}
    assert 0.05 < _garbage(out) < 0.25

    for path in paths[3:9]:  # 30 % dead: past the threshold, rewritten without garbage
        path.unlink()
    result = clean_dataset(data, out, PARAMS)
    assert result.processed == []  # moved from the old shard, not decoded again
    assert shard not in _shards(out) and _garbage(out) == pytest.approx(0)
    assert_same_cache(out, _full_run(data, tmp_path))


def test_many_small_shards_are_merged(tmp_path):
    data, out = tmp_path / "data", tmp_path / "clean"
    write_image_folder(data, per_class=4)
    clean_dataset(data, out, PARAMS)
    counts = []
    for seed in range(1, MAX_SMALL + 3):
        write_image_folder(data, per_class=1, seed=seed)
        clean_dataset(data, out, PARAMS)
        counts.append(len(_shards(out)))
    assert max(counts) <= MAX_SMALL and 1 in counts  # merged into one once they were too many
    assert_same_cache(out, _full_run(data, tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_damaged_shard_is_detected_and_rebuilt_from_data(tmp_path, damage):
    data, out = tmp_path / "data", tmp_path / "clean"
    write_image_folder(data, per_class=6)
    first = clean_dataset(data, out, PARAMS)
    (name,) = _shards(out)
    path = out / SHARDS / name
    original = path.read_bytes()
    blob = bytearray(original)
    if damage == "truncate":  # a killed write
        path.write_bytes(blob[: len(blob) // 2])
    else:  # bit rot in the pixels of some image
        blob[len(blob) // 2] ^= 0xFF
        path.write_bytes(bytes(blob))

    reader = ShardReader(out)  # a reader never hands out the damaged pixels
    with pytest.raises(ShardError, match="clean stage"):
        for sha in reader.locations:
            reader.image(sha)

    result = clean_dataset(data, out, PARAMS)
    assert result.rebuilt_shards == [name]
    assert sorted(result.processed) == sorted(r.path for r in first.records)  # from data/
    assert path.read_bytes() == original  # content-addressed: the same images, the same file
    assert_same_cache(out, _full_run(data, tmp_path))
    for sha in ShardReader(out).locations:
        ShardReader(out).image(sha)


def test_a_crashed_runs_leftovers_are_removed(tmp_path):
    data, out = tmp_path / "data", tmp_path / "clean"
    write_image_folder(data, per_class=3)
    clean_dataset(data, out, PARAMS)
    (out / SHARDS / ".incoming.x1y2.tmp").write_bytes(b"half a shard")
    np.save(out / SHARDS / "0123abcd.npy", np.zeros(10, np.uint8))  # written, never indexed
    result = clean_dataset(data, out, PARAMS)
    assert result.processed == []
    assert set(_shards(out)) == {loc.shard for loc in read_locations(out)}


def test_a_shard_verified_earlier_is_trusted_by_its_stat_until_it_changes(tmp_path):
    """With a checks file (what the stage uses), an unchanged shard is not hashed again;
    any write to it changes its mtime, and it is hashed, found damaged and rebuilt."""
    data, out, checks = tmp_path / "data", tmp_path / "clean", tmp_path / "checks.json"
    write_image_folder(data, per_class=6)
    first = clean_dataset(data, out, PARAMS, checks_file=checks)
    (name,) = _shards(out)
    path = out / SHARDS / name
    assert name not in load_checks(checks)  # written a moment ago: not trusted by stat yet
    old = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(old, old))
    clean_dataset(data, out, PARAMS, checks_file=checks)  # hashed once more, then recorded
    st = path.stat()
    assert load_checks(checks)[name] == [
        st.st_size,
        old,
        st.st_ino,
        read_locations(out)[0].shard_sha256,
    ]

    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))  # same size and inode, new mtime
    os.utime(path, ns=(old, old))  # bit rot that even keeps the mtime: trusted by stat…
    assert clean_dataset(data, out, PARAMS, checks_file=checks).rebuilt_shards == []
    reader = ShardReader(out)  # …but never used: the reader checks each image's crc32
    with pytest.raises(ShardError, match="checksum"):
        for image in reader.locations:
            reader.image(image)

    path.touch()  # any write moves the mtime: hashed, found damaged, rebuilt
    result = clean_dataset(data, out, PARAMS, checks_file=checks)
    assert result.rebuilt_shards == [name]
    assert sorted(result.processed) == sorted(r.path for r in first.records)
    assert_same_cache(out, _full_run(data, tmp_path))
