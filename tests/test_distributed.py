"""DDP under torchrun, on CPU with the Gloo backend: two ranks stay in step, only rank 0 writes."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from params import TrainParams
from tasks.checkpoint import load_torch
from tasks.train import CHECKPOINT, MODEL
from tests.conftest import REPO
from tests.training import save_inputs, tiny_train_data


def _logs(folder: Path) -> str:
    """The ranks' torchrun logs under `folder`, for a failure message."""
    return "".join(f"\n== {p}\n{p.read_text()[-2000:]}" for p in sorted(folder.rglob("*.log")))


CHILD = """
import json, os, sys
from pathlib import Path
from tasks.train import fit
from tests.training import load_inputs

root, out = Path(sys.argv[1]), Path(sys.argv[2])
data, params = load_inputs(root)
result = fit(params, data, out_dir=out, show_progress=False)
history = [[m.val_loss, m.train_loss] for m in result.history]
(root / f"result{os.environ['RANK']}.json").write_text(json.dumps(history))
"""


def test_two_ranks_train_in_step_and_only_rank_0_writes(tmp_path):
    from flows.project.server import free_port

    data = tiny_train_data(tmp_path / "data")
    params = TrainParams(epochs=2, freeze_epochs=1, batch_size=4, device="cpu", patience=5)
    inputs = save_inputs(data, params, tmp_path / "inputs")
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


@pytest.mark.e2e
def test_dvc_repro_trains_on_two_nodes_under_the_launcher_from_the_environment(
    tmp_path, prefect_server
):
    """The README's two-node recipe on one machine: node 0 is `dvc repro train` under
    `VISIONTUNE_LAUNCHER`, node 1 a plain torchrun of `visiontune stage train`; Gloo ranks."""
    from flows.collect import run_collect
    from flows.pipeline import pipeline_flow
    from flows.project.server import free_port
    from tests.images import write_image_folder
    from tests.processes import start
    from tests.project import TINY_PARAMS, make_project, sh

    source = tmp_path / "source"
    write_image_folder(source, per_class=8)
    params = {**TINY_PARAMS, "tune": {"n_trials": 0}}
    project = make_project(tmp_path / "project", params)
    run_collect("folder", str(source), str(project))
    pipeline_flow(str(project), until="tune")  # in-process: only train is left for dvc
    logs = tmp_path / "ranks"
    torchrun = (
        f"{sys.executable} -m torch.distributed.run --nnodes=2 --nproc-per-node=1"
        f" --rdzv-backend=static --rdzv-endpoint=127.0.0.1:{free_port(29600)}"
    )
    node1 = start(
        *torchrun.split(),
        "--node-rank=1",
        f"--log-dir={logs / 'node1'}",
        "--redirects=3",
        str(Path(sys.executable).with_name("visiontune")),
        "stage",
        "train",
        cwd=project,
    )
    os.environ["VISIONTUNE_LAUNCHER"] = (
        f"{torchrun} --node-rank=0 --log-dir={logs / 'node0'} --redirects=3"
    )
    repro = None
    try:
        out = (tmp_path / "repro.log").open("w")  # a file: an unread pipe would stall dvc
        repro = start("dvc", "repro", "train", cwd=project, stdout=out)
        deadline = time.monotonic() + 600
        while repro.poll() is None:  # a node 1 that dies leaves rank 0 waiting on it
            assert node1.poll() in (None, 0), _logs(logs / "node1")
            assert time.monotonic() < deadline, "dvc repro train still running after 600 s"
            time.sleep(1)
        stdout = (tmp_path / "repro.log").read_text()
        assert repro.returncode == 0, stdout[-3000:] + _logs(logs / "node0")
        assert node1.wait(timeout=300) == 0, _logs(logs / "node1")
    finally:
        del os.environ["VISIONTUNE_LAUNCHER"]
        for proc in (node1, repro):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    assert "Running stage 'train'" in stdout
    assert "launching: " in stdout and "torch.distributed.run" in stdout
    ranks = sorted(p.relative_to(logs).parts[0] for p in logs.rglob("stdout.log"))
    assert ranks == ["node0", "node1"], list(logs.rglob("*"))
    assert (project / "artifacts" / "train" / "model.pt").is_file()
    status = sh("dvc", "status", "train", cwd=project)
    assert "up to date" in status.stdout, status.stdout
