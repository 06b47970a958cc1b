"""Using a trained model without the project: predict on raw images, export with parity."""

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from params import TrainParams
from tasks.dataset import CachedImages, make_loader
from tasks.export import SUFFIX, ExportParityError, check_parity, export_model, metadata, normalised
from tasks.predict import folder_classes, list_images, predict_images
from tasks.quantize import export_fp16, gate, quantize_int8, quantized_path
from tasks.runtime import open_model
from tasks.train import MODEL, fit, load_model, predict_logits
from tests.images import truncated_png
from tests.training import split_pixels_of, tiny_train_data


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
def test_export_takes_pixels_and_gives_the_same_outputs(trained, tmp_path, fmt):
    _, data, model_pt = trained
    net, meta = load_model(model_pt)
    pixels = split_pixels_of(data, meta["classes"])  # uint8 (N, 32, 32, 3)
    out = tmp_path / f"model{SUFFIX[fmt]}"
    parity = export_model(net, meta, fmt, out, pixels)
    assert parity.same_argmax and parity.max_abs_diff <= 1e-4 and parity.n_inputs == len(pixels)
    # the file alone: pixels in, logits and probabilities out, what an app needs in its metadata
    exported = open_model(out)
    logits, probs = exported.run(pixels)
    dataset = CachedImages(data.part("test"), data.clean_dir, data.eval_pipeline, meta["classes"])
    with torch.no_grad():
        expected = net(torch.stack([dataset[i][0] for i in range(len(dataset))]))
    assert np.abs(logits - expected.numpy()).max() <= 1e-4
    assert np.abs(probs - expected.softmax(1).numpy()).max() <= 1e-5
    assert exported.meta["classes"] == data.classes and exported.meta["image_size"] == 32
    assert exported.meta["input"] == {
        "name": "pixels",
        "dtype": "uint8",
        "layout": "NHWC",
        "channels": "RGB",
    }
    steps = [s["op"] for s in exported.meta["resize"]["steps"]]
    assert steps == ["SmallestMaxSize", "CenterCrop"] and exported.meta["thresholds"] is None
    if fmt == "onnx":
        import onnx

        batch_dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param  # any batch size
    # the check catches a model that differs: compare against another network
    other, _ = load_model(model_pt)
    with torch.no_grad():
        other.get_submodule("_fc").weight.add_(1.0)
    assert not check_parity(other, out, fmt, pixels, meta).ok(1e-4)
    # a failed check removes the file and raises (no tolerance passes; a tiny net exports fast)
    tiny = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(4, len(data.classes)),
    )
    with pytest.raises(ExportParityError, match="differs"):
        export_model(tiny, meta, fmt, tmp_path / f"bad.{fmt}", pixels, atol=-1.0)
    assert not (tmp_path / f"bad.{fmt}").exists()


def test_a_float_input_export_takes_the_normalised_batch(trained, tmp_path):
    _, data, model_pt = trained
    net, meta = load_model(model_pt)
    pixels = split_pixels_of(data, meta["classes"])
    out = tmp_path / "float.onnx"
    assert export_model(net, meta, "onnx", out, pixels, pixels_in=False).ok(1e-4)
    exported = open_model(out)
    assert exported.meta["input"]["layout"] == "NCHW" and not exported.pixels_in
    paths = [data.clean_dir.parent / "data" / rel for rel in data.part("test")["path"]]
    assert predict_images(out, paths)["predicted"].tolist() == (
        predict_images(model_pt, paths)["predicted"].tolist()
    )


def test_int8_export_passes_the_gate_and_predicts_like_the_model(trained, tmp_path):
    _, data, model_pt = trained
    net, meta = load_model(model_pt)
    fp32 = tmp_path / "model.onnx"
    export_model(net, meta, "onnx", fp32, split_pixels_of(data, meta["classes"]))
    int8 = quantized_path(fp32, "int8")
    calibration = split_pixels_of(data, meta["classes"], "train")
    quantize_int8(fp32, int8, calibration, metadata(meta, True, "int8"))
    assert int8.name == "model.int8.onnx" and int8.stat().st_size < 0.35 * fp32.stat().st_size
    exported = open_model(int8)
    assert exported.meta["precision"] == "int8"
    targets = np.asarray(
        CachedImages(data.part("test"), data.clean_dir, data.eval_pipeline, meta["classes"]).targets
    )
    pixels = split_pixels_of(data, meta["classes"])
    checked = gate(net, exported, [(pixels, targets)], meta, "int8")
    assert checked.n_images == len(pixels) and checked.ok(0.99, 0.01), checked
    assert not checked.ok(1.001, 0.01)  # agreement above 100% refuses
    # predict through the INT8 file: the same top-1 as model.pt on the raw files
    paths = [data.clean_dir.parent / "data" / rel for rel in data.part("test")["path"]]
    got, want = predict_images(int8, paths), predict_images(model_pt, paths)
    assert (got["predicted"] == want["predicted"]).mean() >= 0.99
    assert np.abs(got["confidence"] - want["confidence"]).max() < 0.05


def test_fp16_export_keeps_pixels_in_and_float32_out(trained, tmp_path):
    _, data, model_pt = trained
    net, meta = load_model(model_pt)
    fp32 = tmp_path / "model.onnx"
    pixels = split_pixels_of(data, meta["classes"])
    export_model(net, meta, "onnx", fp32, pixels)
    fp16 = export_fp16(net, meta, quantized_path(fp32, "fp16"), pixels[:2])
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    logits, probs = open_model(fp16).run(pixels)
    assert logits.dtype == np.float32 and probs.dtype == np.float32
    with torch.no_grad():
        expected = net(normalised(pixels, meta)).numpy()
    assert np.abs(logits - expected).max() < 0.05 and (logits.argmax(1) == expected.argmax(1)).all()


def test_files_that_are_not_models_are_refused_in_one_line(trained, tmp_path):
    import onnx
    from typer.testing import CliRunner

    from flows.cli import app
    from tasks.inference import ModelFormatError

    root, data, _ = trained
    image = root / "data" / data.part("test")["path"].iloc[0]
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    (tmp_path / "junk.ts").write_bytes(b"not a model")
    (tmp_path / "model.h5").write_bytes(b"keras?")
    foreign = tmp_path / "foreign.onnx"  # an ONNX file of another tool: no visiontune metadata
    onnx.save(
        onnx.helper.make_model(
            onnx.helper.make_graph(
                [onnx.helper.make_node("Identity", ["x"], ["y"])],
                "g",
                [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
            )
        ),
        str(foreign),
    )
    for name, says in [
        ("junk.onnx", "not an ONNX model"),
        ("junk.pt", "not a model.pt"),
        ("junk.ts", "not a TorchScript model"),
        ("model.h5", "unknown model format '.h5'"),
        ("foreign.onnx", "not a visiontune export (no classes"),
    ]:
        with pytest.raises(ModelFormatError, match=re.escape(says)):
            open_model(tmp_path / name)
        result = CliRunner().invoke(app, ["predict", str(image), "--model", str(tmp_path / name)])
        assert result.exit_code == 1 and "Traceback" not in result.output
        lines = result.output.strip().splitlines()
        assert lines[0].startswith("error: ") and says.split("'")[0] in " ".join(lines), lines


def test_the_readme_snippet_runs_an_export_without_visiontune(trained, tmp_path):
    """The deployment page's onnxruntime + Pillow snippet, run as its own process on raw files."""
    import subprocess
    import sys

    root, data, model_pt = trained
    net, meta = load_model(model_pt)
    export_model(net, meta, "onnx", tmp_path / "model.onnx", split_pixels_of(data, meta["classes"]))
    snippet = onnx_snippet()
    assert snippet in (Path(__file__).parents[1] / "README.md").read_text()
    assert len([line for line in snippet.splitlines() if line.strip()]) <= 15
    assert "visiontune" not in snippet
    script = tmp_path / "app.py"
    script.write_text(snippet)
    paths = [root / "data" / rel for rel in data.part("test")["path"]]
    expected = predict_images(tmp_path / "model.onnx", paths).set_index("path")
    agree = 0
    for path in paths:
        out = subprocess.run(
            [sys.executable, str(script), str(path)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1"},
        ).stdout.split()
        label, p = " ".join(out[:-1]), float(out[-1])
        agree += label == expected.loc[str(path), "predicted"]
        assert 0 < p <= 1
    assert agree >= 0.9 * len(paths)


def onnx_snippet() -> str:
    """The first python block of docs/deployment.md."""
    text = (Path(__file__).parents[1] / "docs" / "deployment.md").read_text()
    return text.split("```python\n", 1)[1].split("```", 1)[0]


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


def test_a_model_whose_classes_are_not_the_datas_is_refused(trained, tmp_path):
    """Checking an export on another project's split: one clear error, not a wrong gate."""
    from flows.export import ExportDataError, parity_pixels, split_pixels
    from flows.project import Project
    from tasks.inference import LoadedModel

    _, data, model_pt = trained
    project = Project(tmp_path)
    (tmp_path / "artifacts" / "split").mkdir(parents=True)
    (tmp_path / "artifacts" / "clean").symlink_to(data.clean_dir)
    loaded = LoadedModel.load(model_pt)
    data.split.to_parquet(tmp_path / "artifacts" / "split" / "split.parquet")
    assert parity_pixels(project, loaded).shape == (len(data.part("test")), 32, 32, 3)
    other = data.split.assign(label=data.split["label"].replace({"circle": "ellipse"}))
    other.to_parquet(tmp_path / "artifacts" / "split" / "split.parquet")
    with pytest.raises(ExportDataError, match="the test split has ellipse, which the model"):
        list(split_pixels(project, loaded, "test"))
