"""Is the default recipe worth its tricks? Test accuracy at equal epochs on the project's data.

    python benchmarks/recipe.py [--root PROJECT] [--epochs N] [--recipe NAME ...]

Runs on a project whose clean, split and augment stages have run (e.g. after
`make demo`); reads params/train.yaml as the default recipe (not the tune
stage's values) and compares it with:

- plain: a torchvision-style fine-tune: every layer trains from the first
  step at one LR with SGD momentum 0.9 (lr 0.01, weight decay 1e-4, as in
  torchvision's classification reference), constant LR, BatchNorm in train
  mode; no warmup, label smoothing, dropout, MixUp/CutMix or EMA;
- linear_probe: the backbone frozen (BatchNorm statistics included) for every
  epoch; only the new head trains, with the default's optimizer and schedule.

Each recipe trains for the same number of epochs with the same seed; the
epoch with the best validation score is evaluated on the test split. Prints
one line per recipe and the default's margin over the best baseline.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.environment import QUIET_OFFLINE
from flows.inputs import train_data
from flows.project import Project
from params import TrainParams


def recipes(default: TrainParams, epochs: int) -> dict[str, TrainParams]:
    base = default.model_copy(update={"epochs": epochs, "patience": epochs})
    if base.freeze_epochs > epochs:
        base = base.model_copy(update={"freeze_epochs": epochs})
    plain = base.model_copy(
        update={
            "optimizer": "sgd",
            "momentum": 0.9,
            "nesterov": False,
            "lr": 0.01,
            "weight_decay": 1e-4,
            "backbone_lr_mult": 1.0,
            "layer_lr_decay": 1.0,
            "freeze_epochs": 0,
            "unfreeze_stages": 0,
            "batchnorm": "adapt",  # plain model.train(): BatchNorm follows the batches
            "schedule": "constant",
            "warmup_epochs": 0.0,
            "label_smoothing": 0.0,
            "dropout": 0.0,
            "mixup_alpha": 0.0,
            "cutmix_alpha": 0.0,
            "ema_decay": 0.0,
            "grad_clip": 0.0,
        }
    )
    probe = base.model_copy(
        update={"freeze_epochs": epochs, "unfreeze_stages": 0, "batchnorm": "frozen"}
    )
    return {"default": base, "plain": plain, "linear_probe": probe}


def test_accuracy(model_pt: Path, data) -> float:
    import torch

    from tasks.dataset import CachedImages, make_loader
    from tasks.train import load_model, predict_logits

    net, meta = load_model(model_pt)
    test = data.part("test")
    dataset = CachedImages(test, data.clean_dir, data.eval_pipeline, meta["classes"])
    logits, targets = predict_logits(
        net, make_loader(dataset, 64, False, 0, 0), torch.device("cpu")
    )
    return float((logits.argmax(1) == targets).float().mean())


def main() -> int:
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="project root (default: here)")
    parser.add_argument("--epochs", type=int, default=None, help="default: train.yaml's epochs")
    parser.add_argument("--recipe", action="append", choices=["default", "plain", "linear_probe"])
    args = parser.parse_args()
    for key, value in QUIET_OFFLINE.items():
        os.environ.setdefault(key, value)

    from tasks.train import MODEL, fit

    project = Project.find(args.root)
    default: TrainParams = project.params("train")  # type: ignore[assignment]
    epochs = args.epochs or default.epochs
    data = train_data(project)
    chosen = recipes(default, epochs)
    names = args.recipe or list(chosen)
    print(
        f"data: {project.root} ({len(data.part('train'))} train / {len(data.part('val'))} val / "
        f"{len(data.part('test'))} test images, {len(data.classes)} classes, "
        f"{data.image_size}px), model {default.model}, {epochs} epochs each",
        flush=True,
    )
    results: dict[str, float] = {}
    for name in names:
        params = chosen[name]
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            fit_result = fit(params, data, out_dir=Path(tmp), show_progress=False)
            acc = test_accuracy(Path(tmp) / MODEL, data)
        seconds = time.perf_counter() - started
        results[name] = acc
        best = fit_result.best
        val = f"{best.val_accuracy:.3f}" if best and best.val_accuracy is not None else "-"
        print(
            f"{name:13s} test_accuracy={acc:.3f}  best_val_accuracy={val}  "
            f"best_epoch={fit_result.best_epoch + 1}  {seconds:.0f}s",
            flush=True,
        )
    if "default" in results and len(results) > 1:
        others = {k: v for k, v in results.items() if k != "default"}
        rival = max(others, key=others.__getitem__)
        margin = results["default"] - others[rival]
        verdict = "beats" if margin > 0 else "does NOT beat"
        print(f"default {verdict} every baseline: {margin:+.3f} over {rival}")
        return 0 if margin > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
