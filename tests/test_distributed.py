"""DDP under torchrun, on CPU with the Gloo backend: two ranks stay in step, only rank 0 writes."""

import os
import subprocess
import sys

from params import TrainParams
from tasks.augment import save_pipeline
from tasks.checkpoint import load_torch
from tasks.train import CHECKPOINT, MODEL
from tests.conftest import REPO
from tests.training import tiny_train_data

CHILD = """
import json, os, sys
from pathlib import Path
import pandas as pd
from params import CleanParams, TrainParams
from tasks.augment import load_pipeline
from tasks.train import TrainData, fit

root, out = Path(sys.argv[1]), Path(sys.argv[2])
data = TrainData(
    pd.read_parquet(root / "split.parquet"), root / "clean", load_pipeline(root / "train.yaml"),
    load_pipeline(root / "eval.yaml"), 32, clean=CleanParams(max_side=32),
)
params = TrainParams.model_validate_json((root / "params.json").read_text())
result = fit(params, data, out_dir=out, show_progress=False)
history = [[m.val_loss, m.train_loss] for m in result.history]
(root / f"result{os.environ['RANK']}.json").write_text(json.dumps(history))
"""


def test_two_ranks_train_in_step_and_only_rank_0_writes(tmp_path):
    from flows.server import free_port

    data = tiny_train_data(tmp_path / "data")
    params = TrainParams(epochs=2, freeze_epochs=1, batch_size=4, device="cpu", patience=5)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    data.split.to_parquet(inputs / "split.parquet")
    (inputs / "clean").symlink_to(data.clean_dir)
    save_pipeline(data.train_pipeline, inputs / "train.yaml")
    save_pipeline(data.eval_pipeline, inputs / "eval.yaml")
    (inputs / "params.json").write_text(params.model_dump_json())
    (tmp_path / "child.py").write_text(CHILD)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--master-addr=127.0.0.1",
            f"--master-port={free_port(29500)}",
            str(tmp_path / "child.py"),
            str(inputs),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {p.stem: p.read_text() for p in inputs.glob("result*.json")}
    assert set(results) == {"result0", "result1"}, proc.stdout[-2000:] + proc.stderr[-2000:]
    # each rank validates its own copy of the model on the whole val split: equal losses after
    # the unfrozen epoch mean the gradients of the newly trainable backbone were all-reduced too
    assert results["result0"] == results["result1"]
    state = load_torch(out / CHECKPOINT)
    assert state["epoch"] == 1 and (out / MODEL).is_file()
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT, MODEL]
