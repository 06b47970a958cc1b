"""Stable, stratified train/val/test assignment.

Each image's split is a function of its content hash and the seed alone, so a
growing dataset never moves an image that was already assigned; drawing the
same uniform number per image within every class keeps the split stratified
in expectation.
"""

from __future__ import annotations

import hashlib
import logging

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from params import SplitParams

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


class SplitError(ValueError):
    pass


def uniform_from_hash(sha256: str, seed: int) -> float:
    """A number in [0, 1) fixed by content and seed."""
    digest = hashlib.sha256(f"{seed}:{sha256}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(manifest: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    """The manifest with a `split` column; fails if a class gets no training image."""
    if manifest.empty:
        raise SplitError("the clean manifest is empty: no usable images to split")
    u = manifest["sha256"].map(lambda h: uniform_from_hash(h, params.seed))
    cut_train, cut_val = params.train, params.train + params.val
    split = pd.Series("test", index=manifest.index)
    split[u < cut_val] = "val"
    split[u < cut_train] = "train"
    out = manifest.assign(split=pd.Categorical(split, categories=SPLITS))
    counts = split_counts(out)
    empty_train = counts.index[counts["train"] == 0].tolist()
    if empty_train:
        raise SplitError(
            f"class(es) {empty_train} have no training image "
            f"({counts.loc[empty_train, 'total'].tolist()} image(s) in all): add images"
        )
    for split_name in ("val", "test"):
        missing = counts.index[counts[split_name] == 0].tolist()
        if missing and getattr(params, split_name) > 0:
            log.warning("class(es) %s have no %s image: add images", missing, split_name)
    return out


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    counts = pd.crosstab(split["label"], split["split"]).reindex(columns=SPLITS, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return counts


@task(name="assign-splits", cache_policy=NO_CACHE)
def split_task(manifest: pd.DataFrame, params: SplitParams) -> pd.DataFrame:
    return assign_splits(manifest, params)
