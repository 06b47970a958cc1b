"""dvc.yaml's stage DAG as DVC sees it: run order and staleness, without importing Prefect.

`visiontune run` asks here first, so a pipeline with nothing to do answers in
about the time of `dvc status` instead of paying for Prefect's import and a
flow run.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


def in_order(repo, until: str | None = None) -> Iterator:
    """The stages in dependency order (all, or `until` and the stages it needs)."""
    import networkx as nx

    graph = repo.index.graph
    start = None
    if until is not None:
        start = next((s for s in graph.nodes if s.addressing == until), None)
        if start is None:
            raise ValueError(f"no stage named {until!r} in dvc.yaml")
    yield from nx.dfs_postorder_nodes(graph, source=start)


def stale_stages(root: Path, until: str | None = None, upstream_only: bool = False) -> list[str]:
    """Names of the stages DVC would run now (a stage downstream of a stale one counts
    only if its own deps changed: it is re-checked after its upstream runs).

    With `upstream_only`, only the stages before `until`: why `until` may have failed on
    missing or outdated inputs.
    """
    from dvc.repo import Repo, lock_repo

    with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
        stages = in_order(repo, until)
        if upstream_only:
            stages = (stage for stage in stages if stage.addressing != until)
        return [stage.addressing for stage in stages if stage.changed()]
