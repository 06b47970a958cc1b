"""Near-duplicate groups from perceptual hashes (imagehash's 64-bit pHash).

Two images are near-duplicates when their pHashes differ in at most
`threshold` bits; groups are the connected components of that relation
(scipy), so a chain a~b~c is one group even if a and c are further apart.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

MIN_KEY_BITS = 8  # below this, keys are too coarse to prune anything: compare all pairs


def phash_bits(phashes: list[str]) -> np.ndarray:
    """imagehash's hex strings as uint64 words."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def _key_masks(threshold: int, agree: int) -> list[np.uint64]:
    """Masks of every choice of `agree` keys out of threshold + agree equal slices."""
    m = threshold + agree
    bounds = [round(64 * k / m) for k in range(m + 1)]
    slices = [((1 << (hi - lo)) - 1) << lo for lo, hi in itertools.pairwise(bounds)]
    return [np.uint64(sum(combo)) for combo in itertools.combinations(slices, agree)]


def _sorted_runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sort order of `keys`, and start and length of each run of equal keys in it."""
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    return order, starts, np.diff(np.r_[starts, len(keys)])


def _pairs_within_runs(order, starts, lengths) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Every pair of positions inside the same run, one offset at a time."""
    in_pair = np.repeat(lengths > 1, lengths)  # the runs tile the sorted order
    position = np.arange(len(order))[in_pair]
    run_end = np.repeat(starts + lengths, lengths)[in_pair]
    for d in range(1, int(lengths.max(initial=1))):
        room = position + d < run_end
        position, run_end = position[room], run_end[room]
        if not len(position):
            break
        yield order[position], order[position + d]


def _close_pairs(bits: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """Every pair of (distinct) hashes within `threshold` bits (multi-index hashing).

    Cut the 64 bits into threshold + s slices: two hashes that differ in at most
    `threshold` bits differ in at most `threshold` slices, so they agree exactly on
    at least s of them (pigeonhole). Only hashes that share all the slices of one
    s-subset are compared. s = 1 has few, coarse keys; a larger s has more, finer
    keys: it is chosen per dataset by the pairs each would compare (clustered hashes,
    like frames of one video, make coarse keys compare millions of pairs). Candidates
    are filtered key by key, so memory holds the close pairs, not every candidate.
    """
    n = len(bits)
    best: tuple[float, list[np.uint64]] | None = None
    for agree in range(1, 5):
        masks = _key_masks(threshold, agree)
        _, _, lengths = _sorted_runs(bits & masks[0])
        pairs = float((lengths * (lengths - 1) // 2).sum())
        cost = len(masks) * (n + pairs)  # sorts + comparisons, the first key as a sample
        if best is None or cost < best[0]:
            best = (cost, masks)
    rows, cols = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for mask in best[1]:  # type: ignore[index]
        for r, c in _pairs_within_runs(*_sorted_runs(bits & mask)):
            close = np.bitwise_count(bits[r] ^ bits[c]) <= threshold
            rows.append(r[close])
            cols.append(c[close])
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
    """A component id per hash; equal ids are near-duplicates of each other.

    Equal hashes are joined first (np.unique), so the pair search only sees distinct
    hashes: a folder of 1,000 identical frames is one node, not half a million pairs."""
    n = len(phashes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bits, inverse = np.unique(phash_bits(phashes), return_inverse=True)
    if 64 // (threshold + 1) >= MIN_KEY_BITS:
        r, c = _close_pairs(bits, threshold)
    else:
        r, c = _all_pairs(bits, threshold)
    u = len(bits)
    graph = coo_matrix((np.ones(len(r), dtype=np.int32), (r, c)), shape=(u, u))
    _, labels = connected_components(graph, directed=False)
    return labels[inverse.reshape(-1)]
