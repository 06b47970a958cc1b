"""Resumable training state: atomic torch.save, RNG states as plain tensors, safe loading.

Everything in a checkpoint is a tensor, number, string, list or dict, so it
loads with `torch.load(weights_only=True)` (no unpickling of objects).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tasks.files import atomic_path
from tasks.label_task import metric_direction


def save_torch(obj: dict, path: Path) -> None:
    """torch.save to a temp file, fsync, rename: a kill -9 leaves the previous file intact."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_torch(path: Path, device: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=device, weights_only=True)


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) generator states in weights_only-loadable form."""
    version, keys, gauss = random.getstate()
    kind, np_keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": version, "keys": list(keys), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["keys"]), py["gauss"]))
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, fingerprint: str) -> dict | None:
    """The checkpoint at `path` if it is an unfinished run with these params and data.

    A finished run is never resumed: DVC reruns the stage when the code
    changed, and that must retrain rather than return the old model.
    """
    if not path.is_file():
        return None
    state = load_torch(path)
    if state.get("fingerprint") != fingerprint or state.get("finished"):
        return None
    return state


def better(
    value: float, best: float, monitor: str, min_delta: float, loss: float, best_loss: float
) -> bool:
    """Improved by more than min_delta; a tie of a maximised metric goes to the lower loss."""
    if not math.isfinite(best):
        return True
    if metric_direction(monitor) == "maximize":
        return value > best + min_delta or (min_delta == 0 and value == best and loss < best_loss)
    return value < best - min_delta


@dataclass
class CheckpointSaver:
    """Decides "better" and owns the run's files (like timm's CheckpointSaver): the best
    model file, and a checkpoint of the whole state after every epoch. Only the main rank
    writes; without `out_dir` nothing is written (tune trials, cross-validation)."""

    monitor: str
    min_delta: float
    patience: int
    checkpoint: Path | None = None
    model: Path | None = None
    fingerprint: str = ""
    writes: bool = True
    best_epoch: int = -1
    best_score: float = math.inf
    best_loss: float = math.inf  # breaks ties of an accuracy monitor
    bad_epochs: int = 0

    def resume(self) -> dict | None:
        """The unfinished checkpoint of this very run (same params and data), if any."""
        if self.checkpoint is None:
            return None
        state = load_checkpoint(self.checkpoint, self.fingerprint)
        if state is not None:
            self.load_state_dict(state)
        return state

    def update(self, score: float, loss: float, epoch: int) -> bool:
        """Record an epoch's monitored score; True when it is the best so far."""
        improved = better(
            score, self.best_score, self.monitor, self.min_delta, loss, self.best_loss
        )
        if improved:
            self.best_score, self.best_loss, self.best_epoch = score, loss, epoch
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return improved

    @property
    def stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def save(self, improved: bool, model: Callable[[], dict], state: Callable[[], dict]) -> None:
        """The model file when the epoch improved, then the checkpoint (atomic writes)."""
        if not self.writes:
            return
        if improved and self.model is not None:
            save_torch(model(), self.model)
        if self.checkpoint is not None:
            save_torch(state() | self.state_dict(), self.checkpoint)

    def state_dict(self) -> dict:
        return {
            "fingerprint": self.fingerprint,
            "best_epoch": self.best_epoch,
            "best_score": self.best_score,
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch = state["best_epoch"]
        self.best_score = state["best_score"]
        self.best_loss = state["best_loss"]
        self.bad_epochs = state["bad_epochs"]
