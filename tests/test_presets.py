"""The trivialaugment / randaugment presets: torchvision's policies inside saved albumentations
pipelines, seeded by the pipeline, round-tripping through A.save / A.load."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from flows.project import Project
from params import AugmentParams, ParamsError
from tasks.augment import build_pipelines, load_pipeline, save_pipeline
from tasks.transforms import RandAugment, TransformError, TrivialAugmentWide, build_transforms
from tests.images import shape_image


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(shape_image("triangle", random.Random(0)))


@pytest.mark.parametrize(
    ("preset", "policy"), [("trivialaugment", TrivialAugmentWide), ("randaugment", RandAugment)]
)
def test_preset_pipeline_is_seeded_and_survives_save_and_load(tmp_path, photo, preset, policy):
    params = AugmentParams(image_size=32, preset=preset)
    train, _ = build_pipelines(params, (0.5,) * 3, (0.5,) * 3)
    assert any(isinstance(t, policy) for t in train.transforms)
    save_pipeline(train, tmp_path / "train.yaml")
    assert f"tasks.transforms.{policy.__name__}" in (tmp_path / "train.yaml").read_text()
    loaded = load_pipeline(tmp_path / "train.yaml")

    def draws(pipeline, seed: int) -> list[torch.Tensor]:
        pipeline.set_random_seed(seed)
        return [pipeline(image=photo)["image"] for _ in range(6)]

    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = draws(train, 7)
    assert torch.equal(torch.random.get_rng_state(), before)  # torch's own RNG is left alone
    again = draws(loaded, 7)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert first[0].shape == (3, 32, 32) and first[0].dtype == torch.float32
    assert len({t.numpy().tobytes() for t in first}) == 6  # a new draw per image
    other = draws(train, 8)
    assert any(not torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_policies_change_the_image_and_fill_with_the_given_colour(photo):
    from tasks.augment import A

    rand = A.Compose([RandAugment(num_ops=3, magnitude=20, fill=(255, 0, 255))], seed=0)
    outs = [rand(image=photo)["image"] for _ in range(20)]
    assert all(o.dtype == np.uint8 and o.shape == photo.shape for o in outs)
    assert sum(not np.array_equal(o, photo) for o in outs) >= 15
    # geometric ops (rotate/shear/translate) uncover corners filled with magenta
    magenta = [((o == (255, 0, 255)).all(axis=2)).any() for o in outs]
    assert any(magenta) and not ((photo == (255, 0, 255)).all(axis=2)).any()


def test_policies_by_name_in_custom_lists(tmp_path):
    built = build_transforms([{"TrivialAugmentWide": {"num_magnitude_bins": 15}}])
    assert isinstance(built[0], TrivialAugmentWide) and built[0].num_magnitude_bins == 15
    with pytest.raises(TransformError, match=r"RandAugment: unknown argument\(s\) n_ops"):
        build_transforms([{"RandAugment": {"n_ops": 2}}])
    with pytest.raises(TransformError, match=r"magnitude \(40\) must be below"):
        build_transforms([{"RandAugment": {"magnitude": 40}}])
    with pytest.raises(TransformError, match="did you mean RandAugment"):
        build_transforms([{"RandAugmnt": {}}])
    (tmp_path / "params").mkdir()
    path = tmp_path / "params" / "augment.yaml"
    path.write_text("preset: custom\ncustom:\n  - RandAugment: {num_ops: 0}\n")
    with pytest.raises(ParamsError, match=r"RandAugment: num_ops: Input should be greater"):
        Project(tmp_path).params("augment")
