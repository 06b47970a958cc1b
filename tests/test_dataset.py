"""The loader: uint8 from the shards, normalisation (and v2-able augmentations) per batch."""

import torch

from params import AugmentParams
from tasks.augment import build_pipelines
from tasks.dataset import CachedImages, make_loader, split_cores, split_pipeline
from tasks.model import LITE0, preprocessing
from tests.training import tiny_train_data


def test_batches_are_the_floats_the_whole_pipeline_gives(tmp_path):
    data = tiny_train_data(tmp_path, per_class=4)
    dataset = CachedImages(data.split, data.clean_dir, data.eval_pipeline, data.classes)
    loader = make_loader(dataset, 5, False, 0, 0)
    raw, _ = next(iter(loader.loader))
    assert raw.dtype == torch.uint8 and raw.shape == (5, 3, 32, 32)  # what workers hand out
    batches = torch.cat([images for images, _ in loader])
    expected = torch.stack(
        [data.eval_pipeline(image=dataset.reader.image(sha))["image"] for sha in dataset.shas]
    )
    assert batches.dtype == torch.float32 and torch.equal(batches, expected)


def test_device_mode_moves_the_trailing_v2_transforms(tmp_path):
    mean, std = preprocessing(LITE0)
    train, _ = build_pipelines(AugmentParams(image_size=32), mean, std)
    worker, prep, moved = split_pipeline(train, "gpu")
    assert prep is not None and len(prep.steps) == 3
    assert [type(t).__name__ for t in worker.transforms] == ["RandomResizedCrop"]
    assert moved == ["HorizontalFlip", "Rotate", "ColorJitter"]
    worker, _prep, moved = split_pipeline(train, "cpu")
    assert moved == [] and len(worker.transforms) == len(train.transforms) - 2

    data = tiny_train_data(tmp_path, per_class=4)
    dataset = CachedImages(data.split, data.clean_dir, train, data.classes, device_mode="gpu")
    images, _labels = next(iter(make_loader(dataset, 6, True, 0, 0)))
    assert images.dtype == torch.float32 and images.shape == (6, 3, 32, 32)
    assert images.min() >= -1.01 and images.max() <= 1.01  # (pixel - 127) / 128


def test_workers_and_threads_split_the_cores():
    assert split_cores(0) >= 1
    assert split_cores(10_000) == 1
