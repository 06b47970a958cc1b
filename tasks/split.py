"""Stable, stratified train/val/test assignment without leakage, plus optional k folds.

Each image's split is a function of a key and the seed alone. The key is the
image's content hash, or, when images must stay together, one key shared by
the whole group: a near-duplicate group (clean's `dup_group`, the smallest
content hash in it) joined with any rows sharing a value of the optional
`group_by` column. A growing dataset never moves an image that was already
assigned unless a new image joins its group. Drawing the same uniform number
per key within every class keeps the split stratified in expectation; folds
are drawn the same way from an independent number.

Multi-label data (a `labels` column of label sets, tasks/multilabel.py) cannot be
stratified by one number per key: its keys are placed by iterative stratification
(one multi-hot row per key, the union of its images' labels), which depends on
every key at once. There stability comes from the previous split instead: an image
that was assigned keeps its split (and fold), and only the new keys are drawn,
with the shares corrected so that the totals move toward split.yaml's.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from params import SplitParams
from tasks.label_task import task_of
from tasks.multilabel import label_classes, multi_hot, stratified_assignment

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


def hash_splits(
    keys: pd.Series, free: list[str], share: np.ndarray, params: SplitParams
) -> pd.Series:
    """Single-label: each key's split from its own uniform draw, cut at the shares."""
    draws = {k: uniform_from_hash(k, params.seed) for k in keys.unique()}
    u = keys.map(draws)
    cuts = np.cumsum(share) / (share.sum() if len(free) < len(SPLITS) else 1.0)
    index = np.searchsorted(cuts[:-1], u.to_numpy(), side="right")
    return pd.Series(np.array(free, dtype=object)[index], index=keys.index)


def _key_rows(manifest: pd.DataFrame, keys: pd.Series) -> tuple[np.ndarray, pd.Index, np.ndarray]:
    """(each image's key code, the keys, one multi-hot bool row per key: its images' union)."""
    codes, uniques = pd.factorize(keys)
    sets = _text(manifest["labels"]).tolist()
    hot = multi_hot(sets, label_classes(sets)) > 0
    rows = np.zeros((len(uniques), hot.shape[1]), dtype=bool)
    np.logical_or.at(rows, codes, hot)
    return codes, pd.Index(uniques), rows


def _old_per_key(codes: np.ndarray, n_keys: int, old: np.ndarray) -> tuple[np.ndarray, int]:
    """(each key's previous value: its images' most common one (ties: the lowest), -1 for a
    key none of whose images had one; how many old images must move to join their group)."""
    known = old >= 0
    out = np.full(n_keys, -1, dtype=np.int64)
    if not known.any():
        return out, 0
    frame = pd.DataFrame({"key": codes[known], "old": old[known]})
    tally = frame.groupby(["key", "old"]).size().reset_index(name="n")
    tally = tally.sort_values(["key", "n", "old"], ascending=[True, False, True])
    first = tally.drop_duplicates("key")
    out[first["key"].to_numpy()] = first["old"].to_numpy()
    moved = int((out[codes[known]] != old[known]).sum())
    return out, moved


def _extend(
    rows: np.ndarray, old: np.ndarray, share: Sequence[float], order: np.ndarray, seed: int
) -> np.ndarray:
    """Each key's subset (index into `share`): an old key keeps its value, the new ones are
    stratified in `order` with the shares corrected toward the target totals."""
    share = np.asarray(share, dtype=float)
    out = old.copy()
    new = np.flatnonzero(old < 0)
    if len(new) == 0:
        return out
    had = np.bincount(old[old >= 0], minlength=len(share)).astype(float)
    wanted = share / share.sum() * (had.sum() + len(new)) - had
    wanted = np.where(share > 0, np.clip(wanted, 0, None), 0.0)
    if wanted.sum() <= 0:
        wanted = share
    new = new[np.argsort(order[new], kind="stable")]
    out[new] = stratified_assignment(rows[new], wanted, seed)
    return out


def _previous_values(
    manifest: pd.DataFrame, previous: pd.DataFrame | None, column: str, values: Sequence
) -> np.ndarray:
    """Each image's index into `values` of its `column` in `previous` (by content hash), or
    -1: new, or a value no longer among `values`."""
    if previous is None or column not in previous.columns or "sha256" not in previous.columns:
        return np.full(len(manifest), -1, dtype=np.int64)
    before = previous.drop_duplicates("sha256").set_index("sha256")[column]
    before = before.astype(object).map({v: i for i, v in enumerate(values)})
    found = manifest["sha256"].astype(str).map(before)
    return found.fillna(-1).to_numpy(dtype=np.int64)


def stratified_splits(
    manifest: pd.DataFrame,
    keys: pd.Series,
    free: list[str],
    share: np.ndarray,
    params: SplitParams,
    pinned: pd.Series,
    previous: pd.DataFrame | None,
    messages: list[str],
) -> pd.Series:
    """Multi-label: a key with an image in `previous` keeps that split; the new keys are
    placed by iterative stratification, in the order of their hash."""
    codes, uniques, rows = _key_rows(manifest, keys)
    old = _previous_values(manifest, previous, "split", free)
    old_key, moved = _old_per_key(codes, len(uniques), old)
    if moved:
        messages.append(
            f"{moved} image(s) of the previous split moved to join a new near-duplicate or "
            "group member that links them to images of another split"
        )
    # a key with an image in a val/ or test/ folder follows it (plan_splits): not drawn
    drawn = np.ones(len(uniques), dtype=bool)
    drawn[np.unique(codes[pinned.notna().to_numpy()])] = False
    order = np.array([uniform_from_hash(k, params.seed) for k in uniques])
    assigned = np.zeros(len(uniques), dtype=np.int64)
    assigned[drawn] = _extend(rows[drawn], old_key[drawn], share, order[drawn], params.seed)
    return pd.Series(np.array(free, dtype=object)[assigned[codes]], index=manifest.index)


def hash_folds(keys: pd.Series, params: SplitParams) -> pd.Series:
    """Single-label: each key's fold from its own uniform draw (test: -1 is set by the caller)."""
    fold_draws = {k: uniform_from_hash(f"fold:{k}", params.seed) for k in keys.unique()}
    return keys.map(lambda k: math.floor(fold_draws[k] * params.folds)).astype("int64")


def stratified_folds(
    out: pd.DataFrame, keys: pd.Series, params: SplitParams, previous: pd.DataFrame | None
) -> pd.Series:
    """Multi-label: an old key keeps its fold, new keys are stratified over the folds."""
    codes, uniques, rows = _key_rows(out, keys)
    folds = list(range(params.folds))
    old = _previous_values(out, previous, "fold", folds)
    old_key, _ = _old_per_key(codes, len(uniques), old)
    # only keys with a train/val image are folded (the test split is not)
    folded = np.zeros(len(uniques), dtype=bool)
    folded[np.unique(codes[(out["split"] != "test").to_numpy()])] = True
    order = np.array([uniform_from_hash(f"fold:{k}", params.seed) for k in uniques])
    fold = np.zeros(len(uniques), dtype=np.int64)
    share = np.full(params.folds, 1 / params.folds)
    fold[folded] = _extend(rows[folded], old_key[folded], share, order[folded], params.seed)
    return pd.Series(fold[codes], index=out.index, dtype="int64")


def plan_splits(
    manifest: pd.DataFrame, params: SplitParams, previous: pd.DataFrame | None = None
) -> SplitPlan:
    """The manifest with `split` (and `fold` when params.folds > 0), and messages for the user.

    A class with fewer images than there are splits goes to train whole (it
    could not be in every split anyway); a class left without a training
    image is an error. Multi-label data (a `labels` column) is stratified per
    label the same way; `previous` (the last split.parquet, multi-label only:
    single-label assignment is a function of each key already) fixes the split
    and fold of every image it holds.
    """
    if manifest.empty:
        raise SplitError("the clean manifest is empty: no usable images to split")
    task = task_of(manifest)
    if (problem := task.splittable(manifest)) is not None:
        raise SplitError(problem)
    noun = task.some
    messages: list[str] = []
    keys = group_keys(manifest, params.group_by)
    pinned = folder_pins(manifest, params)
    # the draw's cuts over the splits no folder fixes (all three, unless the tree had some)
    free = [s for s in SPLITS if s not in set(pinned.dropna())]
    share = np.array([getattr(params, s) for s in free], dtype=float)
    split = task.assign_splits(manifest, keys, free, share, params, pinned, previous, messages)
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
    per_class = task.per_class(manifest)
    tiny = sorted(per_class.index[per_class < active])
    if tiny:
        tiny_keys = set(keys[task.with_labels(manifest, set(tiny)) & pinned.isna()])
        split[keys.isin(tiny_keys) & pinned.isna()] = "train"
        messages.append(
            f"{noun} {tiny} have fewer images than the {active} splits "
            f"({', '.join(f'{c}: {per_class[c]}' for c in tiny)}): all their images are in "
            "train, so they are not validated or tested; add images"
        )
    out = manifest.assign(split=pd.Categorical(split, categories=SPLITS))
    counts = split_counts(out)
    empty_train = counts.index[counts["train"] == 0].tolist()
    if empty_train:
        raise SplitError(
            f"{noun} {empty_train} have no training image "
            f"({counts.loc[empty_train, 'total'].tolist()} image(s) in all, none drawn for "
            "train): add images, or raise split.yaml `train`"
        )
    if not (out["split"] == "test").any():  # split.yaml requires test > 0
        raise SplitError(
            f"no image drew the test split ({len(manifest)} image(s) in all; a "
            f"{noun.removesuffix('(es)').removesuffix('(s)')} with fewer than {active} images "
            "goes to train whole), so nothing could be evaluated: add images"
        )
    for name in ("val", "test"):
        missing = [c for c in counts.index[counts[name] == 0] if c not in tiny]
        if missing and getattr(params, name) > 0:
            messages.append(f"{noun} {missing} have no {name} image: add images")
    if params.folds:
        fold = task.assign_folds(out, keys, params, previous)
        out["fold"] = fold.where(out["split"] != "test", -1).astype("int64")
        table = fold_counts(out, params.folds)
        thin = table.index[(table == 0).any(axis=1)].tolist()
        if thin:
            messages.append(f"{noun} {thin} are missing from at least one of the folds")
    return SplitPlan(out, messages)


def split_digest(params: SplitParams) -> str:
    """A digest of every split param: a previous split is reused only under the same one."""
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def split_counts(split: pd.DataFrame) -> pd.DataFrame:
    """Images per class (multi-label: per label) and split, and their total."""
    counts = task_of(split).crosstab(split, "split", SPLITS)
    counts["total"] = counts.sum(axis=1)
    return counts


def fold_counts(split: pd.DataFrame, folds: int) -> pd.DataFrame:
    """Train+val images per class (multi-label: per label) and fold."""
    folded, task = split[split["fold"] >= 0], task_of(split)
    table = task.crosstab(folded, "fold", range(folds))
    table = table.reindex(index=task.classes(split), columns=range(folds), fill_value=0)
    table.columns = [f"fold_{f}" for f in table.columns]
    return table


@task(name="assign-splits", cache_policy=NO_CACHE)
def split_task(
    manifest: pd.DataFrame, params: SplitParams, previous: pd.DataFrame | None = None
) -> SplitPlan:
    return plan_splits(manifest, params, previous)
