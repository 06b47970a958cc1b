"""Albumentations train/eval pipelines built from params, saved with `A.save`."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import numpy as np
import pandas as pd
from albumentations.pytorch import ToTensorV2

from params import AugmentParams
from tasks.label_task import task_of
from tasks.transforms import PRESETS, build_transforms


class PipelineError(ValueError):
    pass


def random_steps(params: AugmentParams) -> list[A.BasicTransform]:
    """The random part of the train pipeline (also what the preview shows)."""
    size = (params.image_size, params.image_size)
    specs = params.custom if params.preset == "custom" else PRESETS[params.preset]
    return [
        A.RandomResizedCrop(size=size, scale=(params.scale_min, 1.0), p=1.0),
        *build_transforms(specs),
    ]


def check_output_size(steps: list[A.BasicTransform], params: AugmentParams) -> None:
    """Custom transforms that change the image size would break batching: say so now."""
    size = params.image_size
    probe = A.Compose(steps, seed=params.seed)
    image = np.full((size + 7, size + 3, 3), 127, np.uint8)
    for _ in range(8):
        shape = probe(image=image)["image"].shape[:2]
        if shape != (size, size):
            raise PipelineError(
                f"params/augment.yaml custom: the transforms turn a {size}x{size} crop into "
                f"{shape[1]}x{shape[0]}; they must keep image_size (drop or resize after the "
                "size-changing transform)"
            )


def build_pipelines(
    params: AugmentParams, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[A.Compose, A.Compose]:
    """(train, eval) pipelines: both end in the model's normalisation and a CHW tensor."""
    tail = [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    size = (params.image_size, params.image_size)
    steps = random_steps(params)
    if params.preset == "custom":
        check_output_size(steps, params)
    train = A.Compose([*steps, *tail], seed=params.seed)
    evaluation = A.Compose(
        [
            A.SmallestMaxSize(max_size=params.image_size, p=1.0),
            A.CenterCrop(height=size[0], width=size[1], p=1.0),
            *tail,
        ]
    )
    return train, evaluation


def save_pipeline(pipeline: A.Compose, path: Path) -> None:
    from tasks.files import atomic_path

    with atomic_path(path) as tmp:
        A.save(pipeline, str(tmp), data_format="yaml")


def load_pipeline(path: Path) -> A.Compose:
    return A.load(str(path), data_format="yaml")


def render_preview(
    split: pd.DataFrame, clean_dir: Path, params: AugmentParams, out_png: Path
) -> None:
    """A grid: one row per class, the original then augmented samples of its train images."""
    from tasks.figures import pyplot, save_figure
    from tasks.shards import ShardReader

    reader = ShardReader(clean_dir)
    preview = A.Compose(random_steps(params), seed=params.seed)
    train = split[split["split"] == "train"]
    examples = task_of(split).examples(train)
    labels = list(examples)
    cols = params.preview_per_class + 1
    fig, axes = pyplot().subplots(
        len(labels), cols, figsize=(1.6 * cols, 1.6 * len(labels)), squeeze=False
    )
    for row, label in enumerate(labels):
        image = reader.image(examples[label])
        axes[row][0].imshow(image)
        axes[row][0].set_title("original", fontsize=7)
        axes[row][0].set_ylabel(label, fontsize=8)
        for col in range(1, cols):
            axes[row][col].imshow(preview(image=image)["image"])
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(
        f"train augmentations (first train image of each {task_of(split).noun})", fontsize=9
    )
    fig.tight_layout()
    save_figure(fig, out_png, dpi=90)
