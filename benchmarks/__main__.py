"""Run every benchmark and write benchmarks/results.md: `make bench` (≈29 min on 2 CPU cores).

    python -m benchmarks [--images 10000] [--out benchmarks/results.md] [--only NAME ...]
                         [--recipe-full]

The orchestration and incremental benchmarks share one project of `images`
files (built once, its pipeline run once); the others build their own inputs
in temporary folders. Each row is printed as it is measured.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
from pathlib import Path

from benchmarks.report import Result, stopwatch, write_markdown

NAMES = (
    "decode",
    "data_loading",
    "train_loop",
    "gpu",
    "orchestration",
    "incremental",
    "scaling",
    "scale",
    "recipe",
    "recipe_multilabel",
    "export",
    "faults",
)


def environment() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA GPU"
    return (
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPU cores, {gpu}"
    )


def run(
    names: tuple[str, ...],
    images: int,
    scale_sizes: tuple[int, ...] = (10_000, 100_000),
    recipe_full: bool = False,
) -> list[Result]:
    from benchmarks import data_loading, gpu, incremental, orchestration, scaling, train_loop
    from benchmarks.workspace import scale_workspace

    rows: list[Result] = []
    # first: its in-process pipeline run must import Prefect after pointing it at the
    # project's server (Prefect reads its settings at import)
    if {"orchestration", "incremental"} & set(names):
        with scale_workspace(images) as project:
            if "orchestration" in names:
                rows += orchestration.measure(project)
            if "incremental" in names:
                rows += incremental.measure(project)
    if "decode" in names:
        from benchmarks import decode

        rows += decode.run()
    if "data_loading" in names:
        rows += data_loading.run()
        rows += data_loading.per_core()
    if "train_loop" in names:
        rows += train_loop.run()
    if "gpu" in names:
        rows += gpu.run()
    if "scaling" in names:
        rows += scaling.run()
    if "scale" in names:
        from benchmarks import scale

        rows += scale.run(scale_sizes)
    if "export" in names:
        from benchmarks import export

        rows += export.run()
    if "faults" in names:
        from benchmarks import faults

        rows += faults.run()
    if "recipe" in names:
        from benchmarks import recipe

        rows += recipe.measure(full=recipe_full)
    if "recipe_multilabel" in names:
        from benchmarks import recipe_multilabel

        rows += recipe_multilabel.measure()
    return rows


def main() -> None:
    for key, value in {"NO_ALBUMENTATIONS_UPDATE": "1", "DVC_NO_ANALYTICS": "1"}.items():
        os.environ.setdefault(key, value)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="files in the scale project")
    parser.add_argument(
        "--scale-images",
        type=int,
        nargs="+",
        default=[10_000, 100_000],
        help="project sizes of benchmarks/scale.py (the exponent is taken between them)",
    )
    parser.add_argument(
        "--recipe-full",
        action="store_true",
        help="the recipe benchmark: every dataset, 4 seeds (default: 2 datasets, 1 seed)",
    )
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results.md")
    parser.add_argument("--only", nargs="+", choices=NAMES, default=list(NAMES))
    args = parser.parse_args()
    with stopwatch() as t:
        rows = run(tuple(args.only), args.images, tuple(args.scale_images), args.recipe_full)
    header = (
        "# Benchmark results\n\n"
        f"`make bench` on {datetime.date.today()}: {environment()}. "
        f"All {len(rows)} rows took {t[0] / 60:.1f} min. Ratios compare visiontune with a "
        "baseline run in the same process, so load on the machine hits both; see each "
        "script's docstring for what exactly runs."
    )
    write_markdown(rows, header, args.out)
    missed = [r for r in rows if r.met is False]
    print(f"\nwrote {args.out} ({len(rows)} rows, {len(missed)} goal(s) missed, {t[0]:.0f} s)")


if __name__ == "__main__":
    main()
