"""Scheduled retraining: collect → retrain if the data changed → promote only a better model.

The challenger (this run's model) and the champion (the registry's current
model) are scored on the same test split, each decoding the raw files with the
preprocessing stored in its model.pt. The split is a function of content
hashes, so images the champion trained on never move into the test set. Every
run that trains records a decision, new classes included (retrain.yaml's
`new_classes` policy).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger
from prefect.events import emit_event

from flows.collect import run_collect
from flows.naming import stage_run_name
from flows.pipeline import pipeline_flow
from flows.project import Project
from flows.project.lock import project_lock
from flows.report import publish_markdown
from params import RetrainParams
from tasks.download import DownloadLimits
from tasks.registry import (
    Decision,
    compare_models,
    decide,
    decision_metric,
    promote,
    read_registry,
    record_decision,
)
from tasks.train import MODEL
from tasks.versioning import commit_and_tag, data_version, dvc_push, dvc_track, git_head


def _publish(decision: Decision | None, message: str) -> None:
    body = f"# retrain\n\n**{message}**\n"
    if decision:
        body += "\n" + pd.Series(asdict(decision), dtype=object).to_frame("value").to_markdown()
    publish_markdown("retrain-decision", body, description=message)


@flow(name="retrain", flow_run_name=stage_run_name("retrain"), log_prints=True)
def retrain_flow(params: RetrainParams | None = None, root: str = ".") -> dict:
    """Params default to params/retrain.yaml, read when the run starts."""
    project = Project(Path(root).resolve())
    log = get_run_logger()
    # a scheduled run that comes due while a command writes the project waits for it
    with project_lock(project, "retrain flow run", on_wait=log.warning):
        return _retrain(project, params or project.params("retrain"), log)  # type: ignore[arg-type]


def collect_source(project: Project, params: RetrainParams) -> dict:
    """The collect step: retrain.yaml's source, with its collect options, into data/."""
    location = str(project.root / params.path) if params.path else ""  # absolute stays absolute
    limits = DownloadLimits(
        timeout=params.timeout,
        max_bytes=int(params.max_mb * 2**20),
        retries=params.retries,
        backoff=params.backoff,
        workers=params.workers,
        allow_private=params.allow_private,
    )
    return run_collect(
        params.source,
        location,
        str(project.root),
        params.label,
        params.per_class,
        limits,
        mirror=params.mirror,
        label_sep=params.label_sep,
        label_columns=params.label_columns,
        allow_empty=params.allow_empty,
    )


def _retrain(project: Project, params: RetrainParams, log) -> dict:
    before = data_version(project.root)
    collected = collect_source(project, params)
    after = data_version(project.root)
    registry = read_registry(project.models)
    if after == before and registry.champion is not None:
        message = f"no new data (data.dvc still at {after}): nothing to retrain"
        log.info(message)
        _publish(None, message)
        return {"decision": "no new data", "data_version": after, "collect": collected}

    pipeline_flow(str(project.root))
    art = project.artifacts
    split = pd.read_parquet(art("split") / "split.parquet")
    champion_pt = None
    if registry.champion is not None:
        champion_pt = project.models / registry.version(registry.champion).path
    comparison = compare_models(art("train") / MODEL, champion_pt, split, project.data)
    promoted, reason = decide(comparison, params)
    new_version = None
    if promoted:
        new_version = promote(
            project.models,
            art("train") / MODEL,
            comparison.challenger,
            after,
            git_head(project.root),
        )
    shared = comparison.shared_challenger, comparison.shared_champion
    metric = decision_metric(comparison, params)
    decision = Decision(
        promoted=promoted,
        reason=reason,
        metric=metric,
        challenger=(shared[0] or {}).get(metric, comparison.challenger[metric]),
        champion=shared[1].get(metric) if shared[1] else None,
        champion_version=registry.champion,
        new_version=new_version,
        data_version=after,
        compared=comparison.compared if champion_pt else None,
        new_classes=comparison.new_classes,
        removed_classes=comparison.removed_classes,
    )
    record_decision(project.models, decision)
    log.info(reason)
    if params.commit:
        if promoted:
            dvc_track(project.root, "models/versions")
        commit_and_tag(
            project.root,
            [
                "data.dvc",
                "dvc.lock",
                "models/registry.json",
                "models/versions.dvc",
                "models/.gitignore",
                ".gitignore",
            ],
            f"retrain: {reason}",
            f"model-v{new_version}" if promoted else None,
        )
    if params.push and promoted:
        dvc_push(project.root)
    emit_event(
        event=f"visiontune.model.{'promoted' if promoted else 'rejected'}",
        resource={"prefect.resource.id": f"visiontune.project.{project.root.name}"},
        payload=asdict(decision),
    )
    _publish(decision, reason)
    return asdict(decision) | {"collect": collected}
