"""Tiny real training inputs: shape images → clean → split → pipelines, as the stages make them.

save_inputs/load_inputs hand them (and the train params) to a child process: a training run
killed with -9, the ranks of torchrun.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from params import AugmentParams, CleanParams, SplitParams, TrainParams
from tasks.augment import build_pipelines, load_pipeline, save_pipeline
from tasks.clean import clean_dataset
from tasks.dataset import CachedImages
from tasks.model import LITE0, preprocessing
from tasks.train import TrainData
from tests.images import write_image_folder

CLEAN = CleanParams(max_side=32)


def tiny_train_data(root: Path, per_class: int = 10) -> TrainData:
    """Three shape classes at 32 px, split 60/20/20; the raw images stay under root/data."""
    write_image_folder(root / "data", per_class=per_class)
    records = clean_dataset(root / "data", root / "clean", CLEAN).records
    manifest = pd.DataFrame([r.__dict__ for r in records])
    split = assign(manifest)
    mean, std = preprocessing(LITE0)
    train_pipe, eval_pipe = build_pipelines(AugmentParams(image_size=32), mean, std)
    return TrainData(split, root / "clean", train_pipe, eval_pipe, image_size=32, clean=CLEAN)


def assign(manifest: pd.DataFrame) -> pd.DataFrame:
    from tasks.split import plan_splits

    return plan_splits(manifest, SplitParams(train=0.6, val=0.2, test=0.2)).frame


def save_inputs(data: TrainData, params: TrainParams, folder: Path) -> Path:
    """Write `data` (split, a link to its clean cache, both pipelines) and `params` to folder."""
    folder.mkdir(parents=True)
    data.split.to_parquet(folder / "split.parquet")
    (folder / "clean").symlink_to(data.clean_dir)
    save_pipeline(data.train_pipeline, folder / "train.yaml")
    save_pipeline(data.eval_pipeline, folder / "eval.yaml")
    (folder / "params.json").write_text(params.model_dump_json())
    return folder


def load_inputs(folder: Path) -> tuple[TrainData, TrainParams]:
    """The TrainData and TrainParams that save_inputs wrote (images at 32 px, clean as CLEAN)."""
    data = TrainData(
        pd.read_parquet(folder / "split.parquet"),
        folder / "clean",
        load_pipeline(folder / "train.yaml"),
        load_pipeline(folder / "eval.yaml"),
        image_size=32,
        clean=CLEAN,
    )
    return data, TrainParams.model_validate_json((folder / "params.json").read_text())


def split_pixels_of(data: TrainData, classes: list[str], part: str = "test"):
    """A split's images as an export's pixels-in graph takes them: uint8 (N, H, W, 3) after the
    eval pipeline's resize and crop (its normalisation left to the graph)."""
    import numpy as np

    dataset = CachedImages(data.part(part), data.clean_dir, data.eval_pipeline, classes)
    return np.stack([dataset.uint8(i).permute(1, 2, 0).numpy() for i in range(len(dataset))])
