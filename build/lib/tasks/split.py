"""Stable, stratified train/val/test assignment without leakage, plus optional k folds.

Each image's split is a function of a key and the seed alone. The key is the
image's content hash, or, when images must stay together, one key shared by
the whole group: a near-duplicate group (clean's `dup_group`, the smallest
content hash in it) joined with any rows sharing a value of the optional
`group_by` column. A growing dataset never moves an image that was already
assigned unless a new image joins its group. Drawing the same uniform number
per key within every class keeps the split stratified in expectation; folds
are drawn the same way from an independent number.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from params import SplitParams

SPLITS = ("train", "val", "test")
FOLDER_SPLIT = "folder_split"  # collect's column for a tree shipped split (tasks/sources.py)


class SplitError(ValueError):
    pass


@dataclass
class SplitPlan:
    frame: pd.DataFrame  # the manifest + split (+ fold)
    messages: list[str] = field(default_factory=list)  # warnings worth showing the user


def uniform_from_hash(key: str, seed: int) -> float:
    """A number in [0, 1) fixed by the key (a content hash or group key) and the seed."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _text(column: pd.Series) -> pd.Series:
    return column.astype(object).where(column.notna(), "").astype(str).str.strip()


def group_keys(manifest: pd.DataFrame, group_by: str | None = None) -> pd.Series:
    """The key each image is assigned by: rows that share a key share a split and a fold."""
    sha = manifest["sha256"].astype(str)
    if "dup_group" in manifest.columns:
        dup = _text(manifest["dup_group"])
        base = dup.where(dup != "", sha)
    else:
        base = sha
    if group_by is None:
        return base
    if group_by not in manifest.columns:
        raise SplitError(
            f"split.yaml group_by: {group_by!r} is not a column of the clean manifest "
            f"(columns: {', '.join(manifest.columns)}); add it to your collect manifest"
        )
    values = _text(manifest[group_by])
    if not (values != "").any():
        return base
    # rows, base keys and group values are nodes; a row links to its base key and its value
    n = len(manifest)
    base_codes, base_uniques = pd.factorize(base)
    value_codes, value_uniques = pd.factorize(values)
    has_value = values.to_numpy() != ""
    rows = np.concatenate([np.arange(n), np.arange(n)[has_value]])
    cols = np.concatenate([n + base_codes, n + len(base_uniques) + value_codes[has_value]])
    size = n + len(base_uniques) + len(value_uniques)
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    frame = pd.DataFrame({"c": component[:n], "base": base.to_numpy(), "value": values.to_numpy()})
    named = frame[frame["value"] != ""].groupby("c")["value"].min().map(lambda v: f"group:{v}")
    plain = frame.groupby("c")["base"].min()
    keys = frame["c"].map(named).fillna(frame["c"].map(plain))
    return pd.Series(keys.to_numpy(), index=manifest.index)


def folder_pins(manifest: pd.DataFrame, params: SplitParams) -> pd.Series:
    """Each image's split fixed by the tree it was collected from (val/ or test/), or NaN.

    Only val and test are pinned: a train/ image is drawn over train and whichever of
    val/test the tree lacks, so a tree of train/ and test/ still gets a validation split.
    """
    none = pd.Series(np.nan, index=manifest.index, dtype=object)
    if not params.folder_split or FOLDER_SPLIT not in manifest.columns:
        return none
    given = _text(manifest[FOLDER_SPLIT])
    kept = [s for s in ("val", "test") if getattr(params, s) > 0 and (given == s).any()]
    return given.where(given.isin(kept), np.nan) if kept else none


def plan_splits(manifest: pd.DataFrame, params: SplitParams) -> SplitPlan:
    """The manifest with `split` (and `fold` when params.folds > 0), and messages for the user.

    A class with fewer images than there are splits goes to train whole (it
    could not be in every split anyway); a class left without a training
    image is an error.
    """
    if manifest.empty:
        raise SplitError("the clean manifest is empty: no usable images to split")
    classes = sorted(manifest["label"].unique())
    if len(classes) < 2:
        raise SplitError(
            f"only one class has usable images ({classes[0]}: {len(manifest)}): a classifier "
            "needs at least two; collect images of another class"
        )
    messages: list[str] = []
    keys = group_keys(manifest, params.group_by)
    draws = {k: uniform_from_hash(k, params.seed) for k in keys.unique()}
    u = keys.map(draws)
    pinned = folder_pins(manifest, params)
    # the draw's cuts over the splits no folder fixes (all three, unless the tree had some)
    free = [s for s in SPLITS if s not in set(pinned.dropna())]
    share = np.array([getattr(params, s) for s in free], dtype=float)
    cuts = np.cumsum(share) / (share.sum() if len(free) < len(SPLITS) else 1.0)
    index = np.searchsorted(cuts[:-1], u.to_numpy(), side="right")
    split = pd.Series(np.array(free, dtype=object)[index], index=manifest.index)
    if pinned.notna().any():
        # a group (near-duplicates, group_by) follows its pinned images; the images
        # themselves always keep their folder's split
        by_key = pd.Series(pinned.to_numpy(), index=keys.to_numpy()).dropna()
        group_pin = keys.map(by_key[~by_key.index.duplicated()])
        followed = int((group_pin.notna() & pinned.isna()).sum())
        split[group_pin.notna()] = group_pin[group_pin.notna()]
        split[pinned.notna()] = pinned[pinned.notna()]
        given = pinned.value_counts()
        messages.append(
            "the tree's own split folders are kept (split.yaml folder_split): "
            + ", ".join(f"{given[s]} {s}" for s in SPLITS if s in given)
            + " image(s) from its folders; the rest is drawn over "
            + ", ".join(free)
            + (
                f"; {followed} other image(s) went with a near-duplicate or group member there"
                if followed
                else ""
            )
        )
        apart = int((split.groupby(keys.to_numpy()).nunique() > 1).sum())
        if apart:
            messages.append(
                f"{apart} group(s) of near-duplicate or grouped images are in more than one "
                "of the tree's split folders, so they straddle splits: check for leakage"
            )

    active = 1 + (params.val > 0) + (params.test > 0)
    per_class = manifest["label"].value_counts()
    tiny = sorted(per_class.index[per_class < active])
    if tiny:
        tiny_keys = set(keys[manifest["label"].isin(tiny) & pinned.isna()])
        split[keys.isin(tiny_keys) & pinned.isna()] = "train"
        messages.append(
            f"class(es) {tiny} have fewer images than the {active} splits "
            f"({', '.join(f'{c}: {per_class[c]}' for c in tiny)}): all their images are in "
            "train, so they are not validated or tested; add images"
        )
    out = manifest.assign(split=pd.Categorical(split, categories=SPLITS))
    counts = split_counts(out)
    empty_train = counts.index[counts["train"] == 0].tolist()
    if empty_train:
        raise SplitError(
            f"class(es) {empty_train} have no training image "
            f"({counts.loc[empty_train, 'total'].tolist()} image(s) in all, none drawn for "
            "train): add images, or raise split.yaml `train`"
        )
    if counts["test"].sum() == 0:  # split.yaml requires test > 0
        raise SplitError(
            f"no image drew the test split ({len(manifest)} image(s) in all; a class with "
            f"fewer than {active} images goes to train whole), so nothing could be "
            "evaluated: add images"
        )
    for name in ("val", "test"):
        missing = [c for c in counts.index[counts[name] == 0] if c not in tiny]
        if missing and getattr(params, name) > 0:
            messages.append(f"class(es) {missing} have no {name} image: add images")
    if params.folds:
        fold_draws = {k: uniform_from_hash(f"fold:{k}", params.seed) for k in keys.unique()}
        fold = keys.map(lambda k: math.floor(fold_draws[k] * params.folds)).astype("int64")
        out["fold"] = fold.where(out["split"] != "test", -1).astype("int64")
        table = fold_counts(out, params.folds)
        thin = table.index[(table == 0).any(axis=1)].tolist()
        if thin:
            messages.append(f"class(es) {thin} are missing from at least one of the folds")
    return SplitPlan(out, messages)


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    counts = pd.crosstab(split["label"], split["split"]).reindex(columns=SPLITS, fill_value=0)
    counts["total"] = counts.sum(axis=1)
    return counts


def fold_counts(split: pd.DataFrame, folds: int) -> pd.DataFrame:
    """Train+val images per class and fold."""
    folded = split[split["fold"] >= 0]
    table = pd.crosstab(folded["label"], folded["fold"])
    table = table.reindex(index=sorted(split["label"].unique()), columns=range(folds), fill_value=0)
    table.columns = [f"fold_{f}" for f in table.columns]
    return table


@task(name="assign-splits", cache_policy=NO_CACHE)
def split_task(manifest: pd.DataFrame, params: SplitParams) -> SplitPlan:
    return plan_splits(manifest, params)
