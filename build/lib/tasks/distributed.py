"""Multi-GPU training under `torchrun` (DDP): who this process is, and rank-0-only writes.

`torchrun --nproc-per-node=N $(which visiontune) stage train` starts N
processes; each trains on its DistributedSampler shard, gradients are
all-reduced by DistributedDataParallel, and only rank 0 writes checkpoints,
the model file, curves and Prefect artifacts. Without torchrun this is one
process of rank 0.

`dvc repro` trains distributed too: with `VISIONTUNE_LAUNCHER="torchrun
--nproc-per-node=2"` in the environment, `visiontune stage train` (the stage's
cmd) runs itself again under that launcher, so dvc.yaml stays the same on one
machine and on many.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

import torch
import torch.distributed as dist

LAUNCHER_ENV = "VISIONTUNE_LAUNCHER"


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks() -> Ranks:
    """This process's place in a torchrun job (read from torchrun's environment variables)."""
    return Ranks(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def launched_command(command: list[str]) -> list[str] | None:
    """`command` prefixed by $VISIONTUNE_LAUNCHER; None when unset or already launched.

    A process that torchrun started has RANK set: it must train, not launch again.
    """
    launcher = shlex.split(os.environ.get(LAUNCHER_ENV, ""))
    if not launcher or "RANK" in os.environ:
        return None
    return [*launcher, *command]


def init(device: torch.device) -> Ranks:
    """Join the process group once (NCCL on CUDA, Gloo on CPU); a no-op for one process."""
    r = ranks()
    if r.distributed and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(r.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return r


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum per-rank running totals (loss, correct, seen) so every rank logs the global value."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()
