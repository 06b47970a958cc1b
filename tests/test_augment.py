"""The augment stage: saved train/eval pipelines, presets, `custom:` lists, the balance plan."""

import random

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from flows.project import Project
from params import AugmentParams, ParamsError, load_params
from tasks.augment import (
    PipelineError,
    build_pipelines,
    load_pipeline,
    render_preview,
    save_pipeline,
)
from tasks.balance import balance_plan, plan_table
from tasks.model import LITE_MEAN, LITE_STD
from tests.images import shape_image, write_cache


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
    rows, images = [], {}
    for label in ("circle", "square"):
        images[f"{label}-sha"] = shape_image(label, random.Random(1))
        rows.append({"label": label, "sha256": f"{label}-sha", "split": "train"})
    write_cache(tmp_path, images)
    out = tmp_path / "preview.png"
    render_preview(pd.DataFrame(rows), tmp_path, AugmentParams(preview_per_class=3), out)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.width > 200


def _write(tmp_path, text: str):
    path = tmp_path / "augment.yaml"
    path.write_text(text)
    return path


def test_presets_build_and_keep_the_image_size():
    for preset, expected in (
        ("light", ["HorizontalFlip", "Rotate", "ColorJitter"]),
        ("strong", ["HorizontalFlip", "Affine", "ColorJitter", "ToGray"]),
    ):
        train, _ = build_pipelines(AugmentParams(image_size=40, preset=preset), LITE_MEAN, LITE_STD)
        names = [t.__class__.__name__ for t in train.transforms]
        assert names[0] == "RandomResizedCrop"
        assert names[1 : 1 + len(expected)] == expected
        for _ in range(5):
            assert train(image=_image())["image"].shape == (3, 40, 40)


def test_custom_transforms_by_name_from_yaml(tmp_path):
    path = _write(
        tmp_path,
        "preset: custom\n"
        "custom:\n"
        "  - VerticalFlip: {p: 1.0}\n"
        "  - GaussNoise: {std_range: [0.1, 0.2], p: 0.5}\n"
        "  - ToGray:\n",
    )
    params = load_params(AugmentParams, path)
    train, _ = build_pipelines(params, LITE_MEAN, LITE_STD)
    names = [t.__class__.__name__ for t in train.transforms]
    assert names[:4] == ["RandomResizedCrop", "VerticalFlip", "GaussNoise", "ToGray"]
    save_pipeline(train, tmp_path / "train.yaml")
    reloaded = [t.__class__.__name__ for t in load_pipeline(tmp_path / "train.yaml").transforms]
    assert reloaded == names


@pytest.mark.parametrize(
    ("custom", "message"),
    [
        (
            "- HorizontalFlp: {p: 0.5}",
            "HorizontalFlp: not an albumentations transform (did you mean HorizontalFlip",
        ),
        ("- Rotate: {limt: 15}", "item 0: Rotate: unknown argument(s) limt; it takes limit"),
        ("- Rotate: {limit: abc}", "item 0: Rotate: limit"),
        ("- HorizontalFlip: {p: 2}", "p: Input should be less than or equal to 1 (got 2)"),
        ("- Normalize: {}", "Normalize: visiontune adds it itself"),
        ("- {HorizontalFlip: {}, VerticalFlip: {}}", "item 0: write each transform as a one-key"),
    ],
)
def test_bad_custom_transforms_fail_naming_file_key_and_reason(tmp_path, custom, message):
    (tmp_path / "params").mkdir()
    path = _write(tmp_path / "params", f"preset: custom\ncustom:\n  {custom}\n")
    with pytest.raises(ParamsError) as err:
        Project(tmp_path).params("augment")
    text = str(err.value)
    assert text.startswith(f"{path}: custom: ") and message in text
    assert "\n" not in text


def test_custom_and_preset_must_agree(tmp_path):
    with pytest.raises(ParamsError, match="preset: custom needs a non-empty `custom` list"):
        load_params(AugmentParams, _write(tmp_path, "preset: custom\n"))
    with pytest.raises(ParamsError, match="ignored by preset 'light'"):
        load_params(AugmentParams, _write(tmp_path, "custom:\n  - ToGray: {}\n"))


def test_a_custom_pipeline_that_changes_the_size_is_refused():
    params = AugmentParams(
        image_size=32,
        preset="custom",
        custom=[{"PadIfNeeded": {"min_height": 40, "min_width": 40, "p": 1.0}}],
    )
    with pytest.raises(PipelineError, match="must keep image_size"):
        build_pipelines(params, LITE_MEAN, LITE_STD)


def test_balance_plan_on_the_train_split():
    split = pd.DataFrame(
        {
            "label": ["a"] * 6 + ["b"] * 2 + ["a", "b", "b"],
            "split": ["train"] * 8 + ["val", "test", "test"],
        }
    )
    plan = balance_plan(split, "class_weights")
    assert set(plan) == {"strategy", "class_counts", "class_weights"}
    assert plan["strategy"] == "class_weights"
    assert plan["class_counts"] == {"a": 6, "b": 2}
    assert plan["class_weights"] == pytest.approx({"a": 8 / (2 * 6), "b": 8 / (2 * 2)})
    table = plan_table(balance_plan(split, "weighted_sampler")).set_index("label")
    assert table["sample_share"].tolist() == pytest.approx([0.5, 0.5])
    assert plan_table(balance_plan(split, "none")).set_index("label")["sample_share"][
        "a"
    ] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="unknown balance strategy"):
        balance_plan(split, "smote")
