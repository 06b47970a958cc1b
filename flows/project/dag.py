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


class Staleness:
    """`stage.changed()` as DVC decides it, hashing each big folder once per pass.

    DVC hashes data/ twice for every status: as data.dvc's output and as the
    clean stage's dependency (at 100,000 files each costs ~1.7 s). Here an output
    found unchanged (data.dvc's data/, or an upstream stage's) is remembered with
    its recorded hash, and a later dependency on the same path compares its
    recorded hash with that one instead of walking the folder again: the same
    answer, since the output's recorded hash is what the folder holds now.
    """

    def __init__(self) -> None:
        self.verified: dict[str, object] = {}  # fs_path → the HashInfo it holds now

    def changed(self, stage) -> bool:
        if stage.changed_stage():
            return True
        if not stage.frozen:
            if stage.is_callback or stage.always_changed:
                return True
            for dep in stage.deps:
                known = self.verified.get(dep.fs_path)
                if known is not None and dep.hash_info:
                    if dep.hash_info != known:
                        return True
                elif dep.status():
                    return True
        if stage.changed_outs():
            return True
        self.remember(stage)
        return False

    def remember(self, stage) -> None:
        """The stage's outputs as recorded (call once they are known to be up to date)."""
        for out in stage.outs:
            if out.hash_info:
                self.verified[out.fs_path] = out.hash_info


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
        staleness = Staleness()
        return [stage.addressing for stage in stages if staleness.changed(stage)]
