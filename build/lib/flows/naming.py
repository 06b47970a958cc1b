"""Flow run names that say what ran: stage, dataset version and a hash of the params."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from tasks.versioning import data_version


def params_digest(params: object) -> str:
    if hasattr(params, "model_dump"):
        params = params.model_dump(mode="json")  # type: ignore[union-attr]
    text = json.dumps(params, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def stage_run_name(stage: str) -> Callable[[], str]:
    """A `flow_run_name` callable, e.g. 'train · data 73c4c018 · params 1a2b3c4d'."""

    def name() -> str:
        from prefect.runtime import flow_run

        parameters = flow_run.parameters or {}
        data = data_version(Path(parameters.get("root", "."))) or "none"
        digest = params_digest(parameters.get("params"))
        return f"{stage} · data {data[:8]} · params {digest}"

    return name
