"""What an export costs and gains: file size, latency and test accuracy of each format.

    python -m benchmarks.export [--models efficientnet_lite0 efficientnet_lite2] [--epochs N]

Each model is fine-tuned on the demo set (the shipped params; `--epochs` shortens the larger
model's run), exported as `visiontune export --quantize int8` does it (pixels in), and every
format is measured in this one process: PyTorch eager (model.pt), TorchScript, ONNX fp32 and
ONNX INT8 (onnxruntime). Latency: median per image of 1 image at a time on 1 thread, and of
batches of 32 on all cores. Accuracy: top-1 on the test split, each format through its own
runtime and the same scorer `visiontune predict --model` uses. Ratios compare INT8 with fp32
ONNX: goals ≤ 0.3× the file, ≤ 0.6× the 1-thread latency, within 1 point of accuracy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.report import Result, at_most, result

RUNTIMES = ("PyTorch eager", "TorchScript", "ONNX fp32", "ONNX INT8")


def trained(model: str, epochs: int | None, work: Path):
    """(model.pt, TrainData) of `model` fine-tuned on the demo set with the shipped params."""
    from benchmarks.recipe import prepare, shipped
    from tasks.inference import MODEL
    from tasks.train import fit

    prepared = prepare("demo", work / "clean")
    params = shipped("train").model_copy(update={"model": model, "device": "cpu"})
    if epochs is not None:
        params = params.model_copy(update={"epochs": epochs, "freeze_epochs": 1})
    data = prepared.data(0, shipped("augment"), model)
    out = work / model
    fit(params, data, out_dir=out, show_progress=False)
    return out / MODEL, data


def exports(model_pt: Path, data, out: Path) -> dict[str, Path]:
    """Every format of the model, written as `visiontune export --quantize int8` writes them."""
    from tasks.export import export_model, metadata
    from tasks.inference import LoadedModel
    from tasks.quantize import quantize_int8

    loaded = LoadedModel.load(model_pt)
    test = _pixels(loaded, data, "test", 16)
    export_model(loaded.net, loaded.meta, "onnx", out / "model.onnx", test)
    export_model(loaded.net, loaded.meta, "torchscript", out / "model.ts", test)
    calibration = _pixels(loaded, data, "train", 300)
    props = metadata(loaded.meta, True, "int8")
    quantize_int8(out / "model.onnx", out / "model.int8.onnx", calibration, props)
    names = ("model.pt", "model.ts", "model.onnx", "model.int8.onnx")
    return dict(zip(RUNTIMES, [model_pt, *(out / n for n in names[1:])], strict=True))


def _pixels(loaded, data, part: str, limit: int) -> np.ndarray:
    rows = data.part(part)
    rows = rows.sample(n=min(limit, len(rows)), random_state=0)
    dataset = loaded.cached(rows, data.clean_dir)
    return np.stack([dataset.uint8(i).permute(1, 2, 0).numpy() for i in range(len(dataset))])


def accuracy(scorer, data) -> float:
    from tasks.dataset import CachedImages, make_loader

    test = data.part("test")
    dataset = CachedImages(test, data.clean_dir, scorer.pipeline, scorer.classes)
    probs, targets = scorer.probs(make_loader(dataset, 32, False, 0, 0))
    return float((probs.argmax(1) == targets).mean())


def seconds_per_image(scorer, batch: np.ndarray | torch.Tensor, rounds: int) -> float:
    """Median time of one forward pass of `batch`, per image (after 3 warm-up passes)."""
    images = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(batch)
    pairs = [(images, torch.zeros(len(images), dtype=torch.long))]
    times = []
    for i in range(rounds + 3):
        start = time.perf_counter()
        scorer.probs(pairs)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times) / len(images)


def input_batch(scorer, data, n: int):
    from tasks.dataset import CachedImages

    rows = data.part("test").head(n)
    rows = rows.loc[rows.index.repeat(-(-n // len(rows)))].head(n)
    dataset = CachedImages(rows, data.clean_dir, scorer.pipeline, scorer.classes)
    items = [dataset[i][0] for i in range(n)]
    return torch.stack([torch.as_tensor(np.asarray(x)) for x in items])


def measure_model(model: str, epochs: int | None, work: Path, rounds: int) -> dict[str, dict]:
    from tasks.runtime import open_model

    model_pt, data = trained(model, epochs, work)
    files = exports(model_pt, data, work / f"{model}-export")
    cores = os.cpu_count() or 1
    table: dict[str, dict] = {}
    for runtime, path in files.items():
        row: dict = {"MB": path.stat().st_size / 1e6}
        for threads, batch in ((1, 1), (cores, 32)):
            torch.set_num_threads(threads)
            scorer = open_model(path, threads=threads)
            row[f"ms b{batch}"] = 1e3 * seconds_per_image(
                scorer, input_batch(scorer, data, batch), rounds
            )
        row["accuracy"] = accuracy(open_model(path), data)
        table[runtime] = row
        print(f"[export] {model} {runtime}: {row}", flush=True)
    torch.set_num_threads(1)
    return table


def rows_of(model: str, table: dict[str, dict]) -> list[Result]:
    fp32, int8 = table["ONNX fp32"], table["ONNX INT8"]
    detail = " · ".join(
        f"{k}: {v['MB']:.1f} MB, {v['ms b1']:.2f} ms (b1, 1 thread), "
        f"{v['ms b32']:.2f} ms/img (b32), acc {v['accuracy']:.3f}"
        for k, v in table.items()
    )
    return [
        result("export", f"{model} INT8 file / fp32", int8["MB"] / fp32["MB"], "×",
               (at_most, 0.3), detail),
        result("export", f"{model} INT8 latency b1 1 thread / fp32",
               int8["ms b1"] / fp32["ms b1"], "×", (at_most, 0.6)),
        result("export", f"{model} INT8 accuracy loss", 100 * (fp32["accuracy"] -
               int8["accuracy"]), " points", (at_most, 1.0)),
    ]  # fmt: skip


def markdown(tables: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| model | runtime | file MB | ms/image, batch 1, 1 thread | ms/image, batch 32, "
        "all cores | test accuracy |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for model, table in tables.items():
        for runtime, v in table.items():
            lines.append(
                f"| {model} | {runtime} | {v['MB']:.1f} | {v['ms b1']:.2f} | {v['ms b32']:.2f} "
                f"| {v['accuracy']:.3f} |"
            )
    return "\n".join(lines)


MODELS = {"efficientnet_lite0": None, "efficientnet_lite2": 2}  # model: epochs (None: shipped)


def run(models: dict[str, int | None] = MODELS, rounds: int = 30) -> list[Result]:
    rows: list[Result] = []
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model, epochs in models.items():
            tables[model] = measure_model(model, epochs, Path(tmp), rounds)
            rows += rows_of(model, tables[model])
    print(markdown(tables), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=None, help="for every model")
    parser.add_argument("--rounds", type=int, default=30, help="timed passes per measure")
    args = parser.parse_args()
    models = {m: args.epochs if args.epochs else MODELS.get(m) for m in args.models}
    run(models, args.rounds)


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    main()
