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
    """`stage.changed()` and `repo.commit` as DVC does them, hashing each big folder once.

    DVC hashes data/ twice for every status (as data.dvc's output and as the
    clean stage's dependency) and twice more when it commits the clean stage
    (saving the dependency, then again to decide on the run cache, which a
    `persist` stage never gets). At 100,000 files each walk costs ~1.7 s. Here an
    output found unchanged (data.dvc's data/, or an upstream stage's) is
    remembered, and a later dependency on the same path takes its recorded hash
    instead of walking the folder again: the same answer, since the output's
    recorded hash is what the folder holds now.
    """

    def __init__(self) -> None:
        self.verified: dict[str, object] = {}  # fs_path → an up-to-date Output

    def changed(self, stage) -> bool:
        if stage.changed_stage():
            return True
        if not stage.frozen:
            if stage.is_callback or stage.always_changed:
                return True
            for dep in stage.deps:
                known = self.verified.get(dep.fs_path)
                if known is not None and dep.hash_info:
                    if dep.hash_info != known.hash_info:  # type: ignore[attr-defined]
                        return True
                elif dep.status():
                    return True
        if stage.changed_outs():
            return True
        for out in stage.outs:
            if out.hash_info:
                self.verified[out.fs_path] = out
        return False

    def commit(self, repo, name: str) -> None:
        """`repo.commit(name, force=True)` after the stage ran: record its deps' and outs'
        hashes in dvc.lock and its outs in the DVC cache."""
        for info in repo.stage.collect_granular(name):
            stage = info.stage
            for dep in stage.deps:
                known = self.verified.get(dep.fs_path)
                if known is not None:
                    dep.hash_info, dep.meta = known.hash_info, known.meta  # type: ignore[attr-defined]
                else:
                    dep.save()
            stage.save_outs()
            stage.md5 = stage.compute_md5()
            if not any(out.persist for out in stage.outs):  # DVC keeps no run cache for them
                repo.stage_cache.save(stage)
            stage.commit(filter_info=info.filter_info)
            stage.dvcfile.dump_stages([stage], update_pipeline=False)


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
