"""Near-duplicate groups from perceptual hashes (imagehash's 64-bit pHash).

Two images are near-duplicates when their pHashes differ in at most
`threshold` bits; groups are the connected components of that relation
(scipy), so a chain a~b~c is one group even if a and c are further apart.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MIN_KEY_BITS = 8  # below this, keys are too coarse to prune anything: compare all pairs


def phash_bits(phashes: list[str]) -> np.ndarray:
    """imagehash's hex strings as uint64 words."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def _candidate_pairs(bits: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair that could be within `threshold` bits (multi-index hashing).

    Cut the 64 bits into threshold + 1 keys: two hashes that differ in at most
    `threshold` bits agree exactly on at least one key (pigeonhole), so only
    hashes sharing a key are compared, instead of all n² pairs.
    """
    n_keys = threshold + 1
    width = 64 // n_keys
    rows, cols = [], []
    for k in range(n_keys):
        shift = k * width
        w = width if k < n_keys - 1 else 64 - shift
        keys = (bits >> np.uint64(shift)) & np.uint64((1 << w) - 1)
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        for d in range(1, len(bits)):  # hashes d apart in key order with the same key
            same = ordered[d:] == ordered[:-d]
            if not same.any():
                break
            rows.append(order[:-d][same])
            cols.append(order[d:][same])
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def _all_pairs(bits: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = [], []
    for start in range(0, len(bits), 2048):
        block = bits[start : start + 2048]
        distance = np.bitwise_count(block[:, None] ^ bits[None, :])
        i, j = np.nonzero(distance <= threshold)
        keep = i + start < j
        rows.append(i[keep] + start)
        cols.append(j[keep])
    return np.concatenate(rows), np.concatenate(cols)


def near_duplicate_components(phashes: list[str], threshold: int) -> np.ndarray:
    """A component id per hash; equal ids are near-duplicates of each other."""
    n = len(phashes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bits = phash_bits(phashes)
    if 64 // (threshold + 1) >= MIN_KEY_BITS:
        r, c = _candidate_pairs(bits, threshold)
        close = np.bitwise_count(bits[r] ^ bits[c]) <= threshold
        r, c = r[close], c[close]
    else:
        r, c = _all_pairs(bits, threshold)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels
