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


def stale_stages(root: Path, until: str | None = None) -> list[str]:
    """Names of the stages DVC would run now (a stage downstream of a stale one counts
    only if its own deps changed: it is re-checked after its upstream runs)."""
    from dvc.repo import Repo, lock_repo

    with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
        return [stage.addressing for stage in in_order(repo, until) if stage.changed()]


def stale_upstream(root: Path, name: str) -> list[str]:
    """The stages before `name` whose deps changed since dvc.lock: why `name` may have
    failed on missing or outdated inputs. Empty when that cannot be told (e.g. while
    `dvc repro` holds the repo lock)."""
    from dvc.repo import Repo, lock_repo

    try:
        with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
            before = [stage for stage in in_order(repo, name) if stage.addressing != name]
            return [stage.addressing for stage in before if stage.changed()]
    except Exception:
        return []
