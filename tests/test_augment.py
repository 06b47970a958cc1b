import random

import numpy as np
import pandas as pd
import torch
from PIL import Image

from params import AugmentParams
from tasks.augment import build_pipelines, load_pipeline, render_preview, save_pipeline
from tasks.model import LITE_MEAN, LITE_STD
from tests.images import shape_image


def _image() -> np.ndarray:
    return np.asarray(shape_image("circle", random.Random(0), size=60))


def test_pipelines_output_normalised_tensors_of_the_image_size():
    params = AugmentParams(image_size=40)
    train, evaluation = build_pipelines(params, LITE_MEAN, LITE_STD)
    for pipe in (train, evaluation):
        out = pipe(image=_image())["image"]
        assert isinstance(out, torch.Tensor)
        assert out.shape == (3, 40, 40)
        assert out.min() >= -1.01 and out.max() <= 1.01  # (pixel - 127) / 128
    white = np.full((50, 50, 3), 255, np.uint8)
    assert evaluation(image=white)["image"].mean().item() == (255 - 127) / 128


def test_saved_pipelines_reload_and_give_the_same_output(tmp_path):
    params = AugmentParams(image_size=32)
    train, evaluation = build_pipelines(params, LITE_MEAN, LITE_STD)
    save_pipeline(evaluation, tmp_path / "eval.yaml")
    save_pipeline(train, tmp_path / "train.yaml")
    reloaded = load_pipeline(tmp_path / "eval.yaml")
    image = _image()
    assert torch.equal(reloaded(image=image)["image"], evaluation(image=image)["image"])
    names = [t.__class__.__name__ for t in load_pipeline(tmp_path / "train.yaml").transforms]
    assert names[:2] == ["RandomResizedCrop", "HorizontalFlip"]
    assert names[-2:] == ["Normalize", "ToTensorV2"]


def test_train_pipeline_is_random_and_eval_is_not():
    train, evaluation = build_pipelines(AugmentParams(image_size=32), LITE_MEAN, LITE_STD)
    image = _image()
    assert not torch.equal(train(image=image)["image"], train(image=image)["image"])
    assert torch.equal(evaluation(image=image)["image"], evaluation(image=image)["image"])


def test_preview_grid_is_a_png(tmp_path):
    rows = []
    for label in ("circle", "square"):
        img = shape_image(label, random.Random(1))
        img.save(tmp_path / f"{label}.png")
        rows.append({"label": label, "cache": f"{label}.png", "split": "train"})
    out = tmp_path / "preview.png"
    render_preview(pd.DataFrame(rows), tmp_path, AugmentParams(preview_per_class=3), out)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 200
