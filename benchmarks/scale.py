"""A project at scale (100k images by default): the data stages, no-op runs, +1 %, dvc push.

    python -m benchmarks.scale [--images 10000 100000] [--keep DIR]

For each size N, a git + DVC project of N real JPEGs of three sizes (generated
as in benchmarks/images.py; cached under ~/.cache/visiontune/scale-N so later
runs skip generating them) with its own Prefect server:

- full collect (`dvc add data`) → clean → split (`visiontune run --until split`
  in this process): wall time, and peak RSS of this process and its children;
- no-op `visiontune run --until split` and no-op `dvc repro split`, each as a
  ratio to a bare `dvc status data.dvc` (the irreducible check of the raw
  data), medians of 3;
- +1 % images: clean + split inside `visiontune run` as a share of the full run;
- `dvc push` of everything to a local remote.

With two or more sizes it prints the time exponent k (t ∝ Nᵏ) between the
first and last and a projection to 1M images.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import statistics
import tempfile
from pathlib import Path

from benchmarks.report import Result, at_most, result, share_of, stopwatch

SIZES = ((160, 120), (320, 240), (500, 375))  # varied, like phone photos scaled down
CACHE = Path.home() / ".cache" / "visiontune"


def raw_images(count: int) -> Path:
    """`count` JPEGs in a cached ImageFolder tree (generated once per count)."""
    from benchmarks.images import generate

    folder = CACHE / f"scale-{count}"
    done = folder / ".complete"
    if not done.is_file():
        shutil.rmtree(folder, ignore_errors=True)
        part = -(-count // len(SIZES))
        for seed, size in enumerate(SIZES):
            n = min(part, count - seed * part)
            generate(folder, n, seed=100 + seed, size=size, jpeg_only=True)
        done.write_text(str(count))
    return folder


def _median_seconds(*args: str, cwd: Path, rounds: int = 3) -> float:
    from tests.project import sh

    times = []
    for _ in range(rounds):
        with stopwatch() as t:
            sh(*args, cwd=cwd)
        times.append(t[0])
    return statistics.median(times)


def peak_rss_mb() -> tuple[float, float]:
    """Peak resident memory (MB) of this process and of its largest waited-for child.

    Our own peak from /proc's VmHWM where there is one: `ru_maxrss` survives exec, so a
    process started from a big parent (`python -m benchmarks`) reports the parent's size."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        own = int(next(line for line in status if line.startswith("VmHWM:")).split()[1])
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return own / 1024, child / 1024


def measure_size(images: int, root: Path) -> tuple[list[Result], float]:
    from benchmarks.workspace import SCALE_PARAMS, add_images, run_pipeline, stop_server
    from tests.project import make_project, sh

    project = root / f"project-{images}"
    make_project(project, SCALE_PARAMS)
    # hard links: the project gets the cached files without copying their bytes
    shutil.copytree(raw_images(images), project / "data", copy_function=os.link)
    (project / "data" / ".complete").unlink()
    sh("visiontune", "server", "start", cwd=project)
    rows: list[Result] = []
    try:
        with stopwatch() as collect:
            sh("dvc", "add", "-q", "data", cwd=project)
        with stopwatch() as full:
            seconds = run_pipeline(project, until="split")
        total = collect[0] + full[0]
        sh("git", "add", "-A", cwd=project)
        sh("git", "commit", "-qm", "data", cwd=project)
        rows.append(
            result(
                "scale",
                f"collect → clean → split, {images} images",
                total,
                unit="s",
                detail=f"dvc add {collect[0]:.0f} s, stages {seconds}",
            )
        )
        own, child = peak_rss_mb()
        rows.append(
            result(
                "scale",
                f"peak RSS, {images} images",
                max(own, child) / 1024,
                unit="GB",
                goal=(at_most, 2.0),
                detail=f"the larger of this process (clean and split run in it: "
                f"{own / 1024:.2f} GB) and its largest child (dvc add, …: {child / 1024:.2f} GB)",
            )
        )
        bare = _median_seconds("dvc", "status", "data.dvc", cwd=project)
        for label, args in (
            ("no-op `visiontune run --until split`", ("visiontune", "run", "--until", "split")),
            ("no-op `dvc repro split`", ("dvc", "repro", "split")),
        ):
            noop = _median_seconds(*args, cwd=project)
            measure = f"{label} / bare `dvc status data.dvc`, {images} images"
            detail = f"{noop:.2f} s vs {bare:.2f} s, medians of 3"
            rows.append(result("scale", measure, noop / bare, "×", (at_most, 1.3), detail))
        added = max(1, images // 100)
        add_images(project, added, seed=7)
        with stopwatch() as inc:
            inc_seconds = run_pipeline(project, until="split")
        work = sum(inc_seconds.values())
        full_work = sum(seconds.values())
        measure = f"+1 % ({added} images): clean + split in `visiontune run`, {images} images"
        detail = f"{work:.1f} s vs {full_work:.1f} s; whole run {inc[0]:.1f} s"
        rows.append(share_of("scale", measure, work, full_work, detail))
        remote = root / f"remote-{images}"
        sh("dvc", "remote", "add", "-f", "-d", "bench", str(remote), cwd=project)
        with stopwatch() as push:
            sh("dvc", "push", "-q", cwd=project)
        shards = len(list((project / "artifacts" / "clean" / "shards").glob("*.npy")))
        rows.append(
            result(
                "scale",
                f"`dvc push` of data + artifacts to a local remote, {images} images",
                push[0],
                unit="s",
                detail=f"{images + added} raw files, {shards} cache shards",
            )
        )
    finally:
        stop_server(project)
    return rows, full[0] + collect[0]


def run(sizes: tuple[int, ...] = (10_000, 100_000), keep: Path | None = None) -> list[Result]:
    """Each size in its own process: Prefect binds to one server per process (at import),
    and the peak RSS is then that size's."""
    import json
    import subprocess
    import sys

    root = keep or Path(tempfile.mkdtemp(prefix="vt-bench-100k-"))
    rows: list[Result] = []
    totals: dict[int, float] = {}
    # not the Prefect server and home an earlier benchmark of this process pointed at
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_HOME")}
    try:
        for n in sizes:
            out = root / f"rows-{n}.json"
            subprocess.run(
                [sys.executable, "-m", "benchmarks.scale", "--one", str(n), str(root), str(out)],
                check=True,
                env=env,
            )
            got = json.loads(out.read_text())
            totals[n] = got["total"]
            rows += [Result(**row) for row in got["rows"]]
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    if len(totals) >= 2:
        import math

        small, large = min(totals), max(totals)
        k = math.log(totals[large] / totals[small]) / math.log(large / small)
        projected = totals[large] * (1_000_000 / large) ** k
        rows.append(
            result(
                "scale",
                f"collect → clean → split time ∝ N^k, {small} → {large}",
                k,
                goal=(at_most, 1.05),
                detail=f"{totals[small]:.0f} / {totals[large]:.0f} s; 1M images projected "
                f"{projected / 60:.0f} min",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--keep", type=Path, default=None, help="work here, leave it behind")
    parser.add_argument("--one", nargs=3, help=argparse.SUPPRESS)  # N ROOT OUT: one size
    args = parser.parse_args()
    if args.one:
        import json
        from dataclasses import asdict

        n, root, out = args.one
        got, total = measure_size(int(n), Path(root))
        Path(out).write_text(json.dumps({"total": total, "rows": [asdict(r) for r in got]}))
        return
    run(tuple(args.images), args.keep)


if __name__ == "__main__":
    main()
