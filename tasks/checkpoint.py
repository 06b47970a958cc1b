"""Resumable training state: atomic torch.save, RNG states as plain tensors, safe loading.

Everything in a checkpoint is a tensor, number, string, list or dict, so it
loads with `torch.load(weights_only=True)` (no unpickling of objects).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from tasks.files import atomic_path


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
