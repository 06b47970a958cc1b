"""The speed work keeps behaviour: faster near-duplicate search, hash reuse, measured data wait,
and the GPU benchmark still runs (tiny, on CPU)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from params import TrainParams
from tasks.clean import hash_files
from tasks.duplicates import near_duplicate_components, phash_bits
from tasks.model import build_classifier
from tasks.train import fit, make_steps, train_epoch
from tests.conftest import REPO
from tests.training import tiny_train_data


def brute_force_components(phashes: list[str], threshold: int) -> np.ndarray:
    bits = phash_bits(phashes)
    distance = np.bitwise_count(bits[:, None] ^ bits[None, :])
    i, j = np.nonzero(distance <= threshold)
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(len(bits),) * 2)
    return connected_components(graph, directed=False)[1]


def clustered_hashes(seed: int) -> list[str]:
    """Random hashes, each with 0–3 copies a few flipped bits away, plus a pile of equal ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(400):
        base = rng.getrandbits(64)
        out.append(base)
        for _ in range(rng.randint(0, 3)):
            near = base
            for _ in range(rng.randint(0, 7)):
                near ^= 1 << rng.randrange(64)
            out.append(near)
    out += [0] * 30 + [0b1011] * 5
    rng.shuffle(out)
    return [f"{h:016x}" for h in out]


@pytest.mark.parametrize("threshold", [0, 1, 4, 6, 7, 12])
def test_near_duplicate_groups_match_comparing_every_pair(threshold):
    phashes = clustered_hashes(threshold)
    fast = near_duplicate_components(phashes, threshold)
    slow = brute_force_components(phashes, threshold)
    pairs = set(zip(fast.tolist(), slow.tolist(), strict=True))
    # the same partition: the labels map one-to-one
    assert len(pairs) == len(set(fast.tolist())) == len(set(slow.tolist()))
    assert len(set(slow.tolist())) < len(phashes)  # there were groups to find


def test_unchanged_files_are_not_read_again_to_hash(tmp_path):
    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (data / "a" / "x.bin").write_bytes(b"one")
    (data / "a" / "y.bin").write_bytes(b"two")
    cache = tmp_path / "hashes.parquet"
    first, _ = hash_files(data, ["a/x.bin", "a/y.bin"], cache)
    # plant a wrong hash for x: it is served as long as x's size and mtime match
    table = pd.read_parquet(cache)
    table.loc[table["path"] == "a/x.bin", "sha256"] = "planted"
    table.to_parquet(cache)
    again, _ = hash_files(data, ["a/x.bin", "a/y.bin"], cache)
    assert again["a/x.bin"] == ("planted", 3)
    assert again["a/y.bin"] == first["a/y.bin"]
    # a changed file (new mtime) is read and hashed again
    stamp = (data / "a" / "x.bin").stat().st_mtime_ns + 10**9
    os.utime(data / "a" / "x.bin", ns=(stamp, stamp))
    assert hash_files(data, ["a/x.bin"], cache)[0]["a/x.bin"] == first["a/x.bin"]
    assert hash_files(data, ["a/x.bin"], None)[0]["a/x.bin"] == first["a/x.bin"]


def test_train_epoch_measures_the_time_spent_waiting_for_data():
    torch.manual_seed(0)
    params = TrainParams(model="resnet18", weights="none", device="cpu", freeze_epochs=0)
    clf = build_classifier(params.model, params.weights, 3, params.dropout)
    clf.net.train()
    steps = make_steps(clf, params, torch.device("cpu"), 4)

    def slow_loader():
        for _ in range(4):
            time.sleep(0.2)  # a loader that makes the step wait
            yield torch.randn(2, 3, 32, 32), torch.tensor([0, 1])

    totals = train_epoch(steps, clf.net, slow_loader())
    assert totals.seen == 8
    assert 0.8 <= totals.data_wait < totals.seconds
    assert 0 <= totals.correct <= 8
    assert np.isfinite(totals.loss) and totals.loss > 0  # summed over the 8 images


def test_fit_reports_data_wait_and_throughput_per_epoch(tmp_path):
    data = tiny_train_data(tmp_path)
    params = TrainParams(epochs=2, freeze_epochs=1, batch_size=8, device="cpu")
    history = fit(params, data, show_progress=False).history
    for m in history:
        assert 0 < m.data_wait < 1
        assert m.images_per_s > 0 and m.seconds > 0


def test_gpu_benchmark_runs_tiny_without_cuda():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for model in ("resnet50", "efficientnet_b0"):
        line = next(x for x in proc.stdout.splitlines() if f"{model} train img/s" in x)
        ratio = float(line.split(": ")[1].split("×")[0])
        assert 0.2 < ratio < 5  # both loops really ran the same work
