"""Training-loop overhead: visiontune's train step vs a minimal hand-written PyTorch loop.

    python -m benchmarks.train_loop [--model efficientnet_lite0] [--size 96] [--steps 8]

Both loops train the same network instance (same trainable layers, same
BatchNorm mode; each loop with its own AdamW state) on the same batches held
in memory, at the same precision. visiontune's side is `tasks.train.train_epoch` with
everything `fit` builds for it (param groups, LR schedule stepped per batch,
label smoothing, GradScaler, metrics summed on the device); the baseline is
zero_grad → forward → loss → backward → step. The two alternate step by step
(who goes first alternates too) for `rounds` passes over the batches; each
side's speed is its median step, so load on a shared machine hits both alike.
On CPU both run on one thread: with two, a step stalls whenever another process
holds a core, and step times swung by up to 5× on these 2-core machines.

Then trains for real (`fit`, 2 epochs, loader with 0 workers on CPU) and
reports the data-wait share of each epoch: the time blocked on the loader
over the epoch's training time, which fit logs as the `data_wait` metric.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.report import Result, at_least, result

NUM_CLASSES = 5


def in_memory_batches(n_batches: int, batch: int, size: int, device):
    """Real images (synthetic photos, normalised) as ready tensors on `device`."""
    import random

    import numpy as np
    import torch

    from benchmarks.images import CLASSES, photo

    rng = random.Random(0)
    out = []
    for b in range(n_batches):
        images, labels = [], []
        for i in range(batch):
            label = (b * batch + i) % NUM_CLASSES
            img = photo(CLASSES[label], rng, (size, size))
            images.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
            labels.append(label)
        x = (torch.stack(images).float() / 255 - 0.5) / 0.25
        out.append((x.to(device), torch.tensor(labels, device=device)))
    return out


def minimal_epoch(net, optimizer, batches, device, dtype, channels_last: bool) -> None:
    import torch
    from torch import nn

    criterion = nn.CrossEntropyLoss()
    for images, labels in batches:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = criterion(net(images), labels)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()


def compare_steps(
    model: str,
    weights: str,
    size: int,
    batch: int,
    steps: int,
    rounds: int,
    device_name: str = "auto",
    amp: str = "auto",
    channels_last: str = "auto",
) -> tuple[float, float, str]:
    """(visiontune img/s, minimal loop img/s, description of the setting)."""
    import torch

    from params import TrainParams
    from tasks.model import build_classifier, pick_device
    from tasks.train import amp_dtype, make_steps, train_epoch, uses_channels_last

    params = TrainParams(
        model=model,
        weights=weights,
        device=device_name,
        amp=amp,
        channels_last=channels_last,
        batch_size=batch,
        freeze_epochs=0,
    )
    device = pick_device(params.device)
    dtype, cl = amp_dtype(params, device), uses_channels_last(params, device)
    torch.manual_seed(0)
    clf = build_classifier(model, weights, NUM_CLASSES, params.dropout)
    # one network for both loops (each with its own optimizer state): a deep copy of a
    # network can run slower than the original (memory layout), which would bias the ratio
    net = clf.net.to(device)
    if cl:
        net.to(memory_format=torch.channels_last)
    net.train()
    clf.set_trainable_stages(len(clf.stages), params.batchnorm)

    batches = in_memory_batches(steps, batch, size, device)
    tools = make_steps(clf, params, device, steps * (rounds + 1))
    base_opt = torch.optim.AdamW(
        [p for p in net.parameters() if p.requires_grad],
        lr=params.lr,
        weight_decay=params.weight_decay,
    )

    def timed(fn, batch_list) -> float:
        started = time.perf_counter()
        fn(batch_list)
        return time.perf_counter() - started

    def run_ours(batch_list) -> None:
        train_epoch(tools, net, batch_list)

    def run_base(batch_list) -> None:
        minimal_epoch(net, base_opt, batch_list, device, dtype, cl)

    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # see the module docstring
    run_ours(batches), run_base(batches)  # warm-up: allocator, kernels, caches
    # step by step, alternating who goes first, so drifting load on a shared machine
    # hits both loops alike; each side's time is the median step
    ours_steps, base_steps = [], []
    for r in range(rounds):
        for i, b in enumerate(batches):
            first, second = (run_ours, run_base) if (r + i) % 2 else (run_base, run_ours)
            t_first, t_second = timed(first, [b]), timed(second, [b])
            ours_steps.append(t_first if first is run_ours else t_second)
            base_steps.append(t_second if first is run_ours else t_first)
    torch.set_num_threads(threads)
    ours, base = statistics.median(ours_steps), statistics.median(base_steps)
    n = batch
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    where += " (1 thread)" if device.type == "cpu" else ""
    setting = f"{model} {size}px batch {batch}, {where} {precision}" + (
        " channels_last" if cl else ""
    )
    return n / ours, n / base, setting


def data_wait(images: int, size: int) -> list[Result]:
    """A real 2-epoch fit: the data-wait share per epoch as fit measures and logs it."""
    from benchmarks.images import generate
    from benchmarks.workspace import train_data
    from params import TrainParams
    from tasks.train import fit

    rows = []
    with tempfile.TemporaryDirectory(prefix="vt-bench-wait-") as tmp:
        generate(Path(tmp) / "data", images, size=(320, 240))
        data = train_data(Path(tmp) / "data", Path(tmp) / "clean", "efficientnet_lite0", size)
        params = TrainParams(epochs=2, freeze_epochs=1, device="cpu", num_workers=0)
        history = fit(params, data, show_progress=False).history
    for m in history:
        stage = "head only" if m.frozen else "all layers"
        rows.append(
            result(
                "train loop",
                f"data-wait share, epoch {m.epoch + 1} ({stage}, 0 workers, CPU)",
                100 * m.data_wait,
                unit="%",
                detail=f"{m.images_per_s:.0f} img/s, {len(data.part('train'))} images",
            )
        )
    return rows


def run(
    model: str = "efficientnet_lite0",
    size: int = 96,
    batch: int = 32,
    steps: int = 8,
    rounds: int = 2,
    wait_images: int = 300,
) -> list[Result]:
    ours, base, setting = compare_steps(model, "default", size, batch, steps, rounds)
    rows = [
        result(
            "train loop",
            "train step img/s vs minimal PyTorch loop",
            ours / base,
            goal=(at_least, 0.95),
            detail=f"{ours:.1f} vs {base:.1f} img/s, {setting}",
        )
    ]
    if wait_images:
        rows += data_wait(wait_images, size)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--wait-images", type=int, default=300, help="0: skip the fit")
    args = parser.parse_args()
    run(args.model, args.size, args.batch, args.steps, args.rounds, args.wait_images)


if __name__ == "__main__":
    main()
