"""Scheduled retraining: collect → retrain if the data changed → promote only a better model.

The challenger (this run's model) and the champion (the registry's current
model) are scored on the same test split. The split is a function of content
hashes, so images the champion trained on never move into the test set.
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
from params import RetrainParams
from tasks.registry import Decision, decide, promote, read_registry, record_decision, score_on_test
from tasks.report import publish_markdown
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
    params = params or project.params("retrain")  # type: ignore[assignment]
    log = get_run_logger()
    before = data_version(project.root)
    run_collect(params.source, params.path or "", str(project.root))
    after = data_version(project.root)
    registry = read_registry(project.models)
    if after == before and registry.champion is not None:
        message = f"no new data (data.dvc still at {after}): nothing to retrain"
        log.info(message)
        _publish(None, message)
        return {"decision": "no new data", "data_version": after}

    pipeline_flow(str(project.root))
    art = project.artifacts
    split = pd.read_parquet(art("split") / "split.parquet")
    challenger = score_on_test(art("train") / MODEL, split, art("clean"))
    champion = None
    if registry.champion is not None:
        version = registry.version(registry.champion)
        champion = score_on_test(project.models / version.path, split, art("clean"))
    promoted, reason = decide(challenger, champion, params)
    new_version = None
    if promoted:
        new_version = promote(
            project.models, art("train") / MODEL, challenger, after, git_head(project.root)
        )
    decision = Decision(
        promoted=promoted,
        reason=reason,
        metric=params.metric,
        challenger=challenger[params.metric],
        champion=champion[params.metric] if champion else None,
        champion_version=registry.champion,
        new_version=new_version,
        data_version=after,
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
    return asdict(decision)
