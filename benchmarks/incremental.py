"""Incremental cost: clean + split after adding 1% new images vs the full run.

    python -m benchmarks.incremental [--images 10000] [--keep DIR]

On a project whose pipeline has run on `images` files, adds 1% more (new
generated photos), versions them with `dvc add` as `visiontune collect` does,
and runs `visiontune run --until split`. The clean stage decodes only the new
contents (its cache is keyed by content hash) and split assigns files by hash.
Goal: clean + split stage time ≤ 5% of the full run's. The wall time of the
whole update (dvc add + run) is reported beside it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from benchmarks.report import Result, at_most, result, stopwatch
from benchmarks.workspace import ScaleProject, add_images, run_pipeline, scale_project, stop_server

DATA_STAGES = ("clean", "split")


def measure(project: ScaleProject) -> list[Result]:
    added = max(1, project.images // 100)
    full = sum(project.seconds.get(s, 0.0) for s in DATA_STAGES)
    with stopwatch() as total:
        with stopwatch() as versioning:
            add_images(project.root, added, seed=1)
        seconds = run_pipeline(project.root, until="split")
    assert set(DATA_STAGES) <= set(seconds), f"clean and split should have rerun: {seconds}"
    incremental = sum(seconds[s] for s in DATA_STAGES)
    return [
        result(
            "incremental",
            f"clean + split after adding {added} images to {project.images}",
            100 * incremental / full,
            unit="%",
            goal=(at_most, 5.0),
            detail=f"{incremental:.1f} s vs {full:.1f} s full; the whole update "
            f"(dvc add {versioning[0]:.1f} s + visiontune run --until split) {total[0]:.1f} s",
        )
    ]


def run(images: int = 10000, keep: Path | None = None) -> list[Result]:
    root = keep or Path(tempfile.mkdtemp(prefix="vt-bench-inc-"))
    try:
        return measure(scale_project(root / "project", images))
    finally:
        stop_server(root / "project")
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--keep", type=Path, default=None, help="build in DIR and keep it")
    args = parser.parse_args()
    run(args.images, args.keep)


if __name__ == "__main__":
    main()
