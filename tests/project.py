"""Throw-away visiontune projects (real git + DVC repos) for pipeline tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent  # not from conftest: benchmarks import this

# tiny budgets: every stage runs for real, in seconds
TINY_PARAMS = {
    "clean": {"max_side": 40},
    "split": {"train": 0.6, "val": 0.2, "test": 0.2},
    "augment": {"image_size": 32, "preview_per_class": 2},
    "tune": {"n_trials": 2, "epochs": 1},
    "train": {"epochs": 2, "freeze_epochs": 1, "batch_size": 8, "device": "cpu"},
}


def env() -> dict[str, str]:
    """The test process's env with this venv's scripts (visiontune, dvc) first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def sh(
    *args: str, cwd: Path, check: bool = True, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """`timeout`: a command waiting on a peer that died fails the test instead of hanging it."""
    proc = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n{output}")
    return proc


def make_project(root: Path, overrides: dict[str, dict] | None = None) -> Path:
    """A git + DVC repo holding this project's dvc.yaml, params and stage code."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    for package in ("tasks", "flows"):  # dvc.yaml lists the stage code as deps
        shutil.copytree(
            REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    (root / "params").mkdir()
    for path in (REPO / "params").glob("*.py"):  # the schema is a dep of every stage
        shutil.copy(path, root / "params" / path.name)
    for path in (REPO / "params").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        data.update((overrides or {}).get(path.stem, {}))
        (root / "params" / path.name).write_text(yaml.safe_dump(data, sort_keys=False))
    (root / ".gitignore").write_text("/artifacts/\n/data/\n/.cache/\n/.prefect/\n")
    sh("git", "init", "-q", cwd=root)
    sh("git", "config", "user.email", "test@example.com", cwd=root)
    sh("git", "config", "user.name", "test", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "config", "core.analytics", "false", cwd=root)
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-qm", "project", cwd=root)
    return root


def of_runs(run_ids):
    """An artifact filter for these flow runs: an unfiltered read returns one page only,
    which a server shared by the whole session soon outgrows."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    return ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=list(run_ids)))
