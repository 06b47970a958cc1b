"""Benchmark inputs built the way the stages build them: raw folder → clean → split → pipelines."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from params import AugmentParams, CleanParams, SplitParams


def train_data(data: Path, clean_dir: Path, model: str, image_size: int, max_side: int = 128):
    """TrainData over `data` (an ImageFolder tree), cleaned into clean_dir and split 80/10/10."""
    from tasks.augment import build_pipelines
    from tasks.clean import clean_dataset
    from tasks.clean_manifest import build_manifest
    from tasks.model import preprocessing
    from tasks.split import plan_splits
    from tasks.train import TrainData

    clean = CleanParams(max_side=max_side)
    manifest = build_manifest(clean_dataset(data, clean_dir, clean).records)
    split = plan_splits(manifest, SplitParams(train=0.8, val=0.1, test=0.1)).frame
    train, evaluation = build_pipelines(AugmentParams(image_size=image_size), *preprocessing(model))
    return TrainData(split, clean_dir, train, evaluation, image_size=image_size, clean=clean)


# A project at scale: small files (the count is what orchestration pays for) and a
# small fast model, so the stage work stays minutes on 2 CPU cores.
SCALE_PARAMS = {
    "clean": {"max_side": 64},
    "augment": {"image_size": 32, "preview_per_class": 2},
    "tune": {"n_trials": 1, "epochs": 1},
    "train": {
        "model": "mobilenet_v3_small",
        "weights": "none",
        "epochs": 1,
        "freeze_epochs": 0,
        "batch_size": 64,
        "device": "cpu",
    },
}


@dataclass
class ScaleProject:
    """A git + DVC project of `images` real files whose pipeline has run once."""

    root: Path
    images: int
    seconds: dict[str, float] = field(default_factory=dict)  # per stage, of that first run
    total: float = 0.0  # the whole `visiontune run`


def scale_project(root: Path, images: int) -> ScaleProject:
    """Build the project in `root`, start its Prefect server and run every stage once
    (in this process, to get each stage's time). Stop the server with `stop_server`."""
    from benchmarks.images import generate
    from benchmarks.report import stopwatch
    from tests.project import make_project, sh

    with stopwatch() as t:
        make_project(root, SCALE_PARAMS)
        generate(root / "data", images, size=(160, 120))
        sh("dvc", "add", "-q", "data", cwd=root)
        sh("git", "add", "data.dvc", ".gitignore", cwd=root)
        sh("git", "commit", "-qm", "data", cwd=root)
    print(f"generated {images} images and versioned them with DVC in {t[0]:.0f} s", flush=True)
    sh("visiontune", "server", "start", cwd=root)
    project = ScaleProject(root, images)
    with stopwatch() as t:
        project.seconds = run_pipeline(root)
    project.total = t[0]
    print(f"ran every stage on {images} images in {t[0]:.0f} s: {project.seconds}", flush=True)
    return project


@contextmanager
def scale_workspace(images: int, keep: Path | None = None) -> Iterator[ScaleProject]:
    """A ScaleProject in a temp folder (or `keep`); its server stopped, the folder deleted."""
    root = keep or Path(tempfile.mkdtemp(prefix="vt-bench-scale-"))
    try:
        yield scale_project(root / "project", images)
    finally:
        stop_server(root / "project")
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def run_pipeline(root: Path, until: str | None = None) -> dict[str, float]:
    """`visiontune run` in this process (against the project's server): seconds per stage."""
    from flows.project import Project
    from flows.project.environment import configure

    configure(Project(root))
    from flows.pipeline import pipeline_flow

    return pipeline_flow(str(root), until=until)["seconds"]


def stop_server(root: Path) -> None:
    """Send this process's buffered Prefect logs, then stop the project's server by PID."""
    import sys

    from tests.project import sh

    if "prefect" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=5)
    sh("visiontune", "server", "stop", cwd=root, check=False)


def add_images(root: Path, count: int, seed: int) -> None:
    """`count` new images in data/ (names unique to `seed`), versioned like `collect` does."""
    from benchmarks.images import generate
    from tests.project import sh

    generate(root / "data", count, seed=seed, size=(160, 120))
    sh("dvc", "add", "-q", "data", cwd=root)
