"""Near-duplicate groups from perceptual hashes (imagehash's 64-bit pHash).

Two images are near-duplicates when their pHashes differ in at most
`threshold` bits; groups are the connected components of that relation
(scipy), so a chain a~b~c is one group even if a and c are further apart.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CHUNK = 2048  # rows compared at once: CHUNK × n bytes of memory


def phash_bits(phashes: list[str]) -> np.ndarray:
    """imagehash's hex strings as uint64 words."""
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def near_duplicate_components(phashes: list[str], threshold: int) -> np.ndarray:
    """A component id per hash; equal ids are near-duplicates of each other."""
    n = len(phashes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    bits = phash_bits(phashes)
    rows, cols = [], []
    for start in range(0, n, CHUNK):
        block = bits[start : start + CHUNK]
        distance = np.bitwise_count(block[:, None] ^ bits[None, :])
        i, j = np.nonzero(distance <= threshold)
        i += start
        keep = i < j
        rows.append(i[keep])
        cols.append(j[keep])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels
