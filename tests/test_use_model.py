"""Using a trained model without the project: predict on raw images, export with parity."""

import json
import shutil

import pandas as pd
import pytest
import torch
from PIL import Image

from params import TrainParams
from tasks.dataset import CachedImages, make_loader
from tasks.export import ExportParityError, check_parity, export_model
from tasks.predict import folder_classes, list_images, predict_images
from tasks.train import MODEL, fit, load_model, predict_logits
from tests.images import truncated_png
from tests.training import tiny_train_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("use")
    data = tiny_train_data(root)
    params = TrainParams(epochs=1, freeze_epochs=0, batch_size=8, device="cpu")
    fit(params, data, out_dir=root / "train", show_progress=False)
    return root, data, root / "train" / MODEL


def test_predict_on_a_folder_matches_evaluation(trained, tmp_path):
    root, data, model_pt = trained
    test = data.part("test")
    folder = tmp_path / "images"
    for rel in test["path"]:  # the raw files, not the clean cache
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "data" / rel, folder / rel)
    truncated_png(folder / "broken.png")
    (folder / "notes.txt").write_text("not an image")
    with Image.open(root / "data" / test["path"].iloc[0]) as img:
        img.convert("RGB").save(folder / "phone.heic")  # what phones save

    listing = list_images(folder)
    paths = listing.images
    assert folder / "notes.txt" not in paths and len(paths) == len(test) + 2
    assert listing.skipped == [folder / "notes.txt"]
    frame = predict_images(model_pt, paths, top_k=2, batch_size=4)
    assert frame["path"].tolist() == [str(p) for p in paths]
    broken = frame.set_index("path").loc[str(folder / "broken.png")]
    assert "corrupt" in broken["error"]
    assert frame.set_index("path").loc[str(folder / "phone.heic"), "error"] == ""
    ok = frame[frame["error"] == ""].set_index("path")
    assert set(ok["top1"]) <= set(data.classes) and (ok["top1"] == ok["predicted"]).all()
    assert (ok["p1"] >= ok["p2"]).all()

    # same probabilities as the evaluate stage computes from the clean cache
    net, meta = load_model(model_pt)
    dataset = CachedImages(test, data.clean_dir, data.eval_pipeline, meta["classes"])
    logits, _ = predict_logits(net, make_loader(dataset, 8, False, 0, 0), torch.device("cpu"))
    expected = torch.softmax(logits, 1).max(1).values.numpy()
    got = ok.loc[[str(folder / rel) for rel in test["path"]], "confidence"].to_numpy()
    assert got == pytest.approx(expected, abs=1e-3)


def test_predict_command_prints_and_writes_csv(trained, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    root, data, model_pt = trained
    image = root / "data" / data.part("test")["path"].iloc[0]
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out.csv"
    result = CliRunner().invoke(
        app, ["predict", str(image), "--model", str(model_pt), "--csv", str(out), "--top-k", "3"]
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    assert frame.loc[0, "predicted"] in data.classes and "top3" in frame.columns
    assert frame.loc[0, "predicted"] in result.output
    # a folder: paths shown relative to it, other files named as skipped, counts per class
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(image, folder / "sub" / "a.png")
    shutil.copy(image, folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.jpg").write_bytes(b"")
    result = CliRunner().invoke(app, ["predict", str(folder), "--model", str(model_pt)])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert (
        "sub/a.png" in output
        and "skipped (not an image file by its extension): notes.txt" in output
    )
    predicted = pd.read_csv(tmp_path / "artifacts" / "predict" / "predictions.csv")["predicted"]
    assert f"predicted: {predicted.dropna().iloc[0]} 2" in output
    assert "3 image(s), 1 unreadable (see the error column)" in output
    missing = CliRunner().invoke(app, ["predict", str(tmp_path / "nope"), "--model", str(model_pt)])
    assert missing.exit_code == 2 and "neither an image file nor a folder" in missing.output


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_gives_the_same_outputs(trained, tmp_path, fmt):
    _, data, model_pt = trained
    net, meta = load_model(model_pt)
    test = data.part("test")
    dataset = CachedImages(test, data.clean_dir, data.eval_pipeline, meta["classes"])
    inputs = torch.stack([dataset[i][0] for i in range(len(dataset))])
    out = tmp_path / f"model.{fmt}"
    parity = export_model(net, meta, fmt, out, inputs)
    assert parity.same_argmax and parity.max_abs_diff <= 1e-4 and parity.n_inputs == len(test)
    if fmt == "onnx":
        import onnx

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["classes"]) == data.classes
        batch_dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param  # any batch size
    else:
        files = {"meta.json": ""}
        torch.jit.load(str(out), _extra_files=files)
        assert json.loads(json.loads(files["meta.json"])["image_size"]) == 32
    # the check catches a model that differs: compare against another network
    other, _ = load_model(model_pt)
    with torch.no_grad():
        other.get_submodule("_fc").weight.add_(1.0)
    assert not check_parity(other, out, fmt, inputs).ok(1e-4)
    # a failed check removes the file and raises (no tolerance passes; a tiny net exports fast)
    tiny = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(data.classes)),
    )
    with pytest.raises(ExportParityError, match="differs"):
        export_model(tiny, meta, fmt, tmp_path / f"bad.{fmt}", inputs, atol=-1.0)
    assert not (tmp_path / f"bad.{fmt}").exists()


def test_a_model_file_of_another_format_is_refused_in_one_line(trained, tmp_path):
    from tasks.checkpoint import load_torch, save_torch
    from tasks.inference import ModelFormatError

    *_, model_pt = trained
    payload = load_torch(model_pt)
    old = tmp_path / "old.pt"
    save_torch(payload | {"format": 1}, old)
    with pytest.raises(ModelFormatError, match="model format 1"):
        load_model(old)


def test_the_folders_of_a_held_out_tree_name_the_classes(tmp_path):
    meta = {"classes": ["food_drink", "label_1a2b", "pug"], "labels": ["Food & Drink", "猫", "pug"]}
    root = tmp_path / "heldout"
    paths = [
        root / "Food & Drink" / "a.png",  # the label itself
        root / "food_drink" / "sub" / "b.png",  # the folder name, an image deeper down
        root / "FOOD DRINK" / "c.png",  # lands on the same folder
        root / "猫" / "d.png",
        root / "pug" / "pug" / "e.png",
        root / "unknown" / "f.png",
        root / "g.png",
    ]
    assert folder_classes(paths, root, meta) == [
        "Food & Drink",
        "Food & Drink",
        "Food & Drink",
        "猫",
        "pug",
        "",
        "",
    ]
    # the folder the user named may itself be a class; folders above it never count
    assert folder_classes([root / "pug" / "h.png"], root / "pug", meta) == ["pug"]
    assert folder_classes([tmp_path / "pug" / "x" / "i.png"], tmp_path / "pug" / "x", meta) == [""]
