"""Incremental cost: clean + split after adding 1% new images vs the full run.

    python -m benchmarks.incremental [--images 10000] [--keep DIR]

On a project whose pipeline has run on `images` files, adds 1% more (new
generated photos), versions them with `dvc add` as `visiontune collect` does,
and runs `visiontune run --until split`. The clean stage decodes only the new
contents (its cache is keyed by content hash) and split assigns files by hash.
Goal: ≤ 5% of the full time, measured twice: the stages' work in this process
(clean_dataset + plan_splits into a fresh cache, then again after the
addition) and the clean + split stage times of `visiontune run` (with their
Prefect subflows and DVC commits), full run vs update.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.report import Result, share_of, stopwatch
from benchmarks.workspace import ScaleProject, add_images, run_pipeline, scale_workspace

DATA_STAGES = ("clean", "split")


def clean_and_split(data: Path, out: Path) -> float:
    """Seconds of the two stages' work in this process: clean_dataset + plan_splits."""
    from benchmarks.workspace import SCALE_PARAMS
    from params import CleanParams, SplitParams
    from tasks.clean import clean_dataset
    from tasks.clean_manifest import build_manifest
    from tasks.split import plan_splits

    with stopwatch() as t:
        params = CleanParams(**SCALE_PARAMS["clean"])
        cleaned = clean_dataset(data, out, params, hashes_file=out / "raw_hashes.parquet")
        plan_splits(build_manifest(cleaned.records, data), SplitParams())
    return t[0]


def measure(project: ScaleProject) -> list[Result]:
    added = max(1, project.images // 100)
    data = project.root / "data"
    with tempfile.TemporaryDirectory(prefix="vt-bench-inc-") as tmp:
        work_full = clean_and_split(data, Path(tmp))
        with stopwatch() as versioning:
            add_images(project.root, added, seed=1)
        with stopwatch() as update:
            seconds = run_pipeline(project.root, until="split")
        work_inc = clean_and_split(data, Path(tmp))
    assert set(DATA_STAGES) <= set(seconds), f"clean and split should have rerun: {seconds}"
    stage_full = sum(project.seconds[s] for s in DATA_STAGES)
    stage_inc = sum(seconds[s] for s in DATA_STAGES)
    what = f"{added} images added to {project.images}"
    work = f"{work_inc:.1f} s vs {work_full:.1f} s (clean_dataset + plan_splits)"
    stages = (
        f"{stage_inc:.1f} s vs {stage_full:.1f} s, each with its Prefect subflow and DVC "
        f"commit; dvc add {versioning[0]:.1f} s, the whole `visiontune run --until split` "
        f"{update[0]:.1f} s"
    )
    return [
        share_of("incremental", f"clean + split work, {what}", work_inc, work_full, work),
        share_of(
            "incremental",
            f"clean + split stages in `visiontune run`, {what}",
            stage_inc,
            stage_full,
            stages,
        ),
    ]


def run(images: int = 10000, keep: Path | None = None) -> list[Result]:
    with scale_workspace(images, keep) as project:
        return measure(project)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--keep", type=Path, default=None, help="build in DIR and keep it")
    args = parser.parse_args()
    run(args.images, args.keep)


if __name__ == "__main__":
    main()
