"""`visiontune run`: one Prefect flow that walks dvc.yaml's DAG and runs the stale stages.

DVC decides what is stale and records what ran (dvc.lock), so afterwards
`dvc status` is clean and `dvc repro` has nothing to do; Prefect runs each
visiontune stage in-process as a subflow, so the whole pipeline is one run in
the UI. Stages whose cmd is not `visiontune stage <name>` run through DVC.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from flows.naming import stage_run_name
from flows.project import Project
from flows.project.dag import Staleness, in_order
from flows.project.lock import project_lock
from flows.stages import STAGES
from params import TrainParams
from params.schema import TrainOverrides, validated


def stage_flow_name(cmd: str | list | None) -> str | None:
    """'clean' for the cmd `visiontune stage clean`, else None."""
    if not isinstance(cmd, str):
        return None
    words = shlex.split(cmd)
    if len(words) == 3 and words[:2] == ["visiontune", "stage"] and words[2] in STAGES:
        return words[2]
    return None


def run_stage(project: Project, name: str) -> dict:
    """Run one stage's flow with its validated params (a subflow when called inside a flow)."""
    stage = STAGES[name]
    return stage.load()(*(project.params(p) for p in stage.params), str(project.root))


def merged(project: Project, given: dict) -> TrainParams:
    """params/train.yaml with `given` on top, validated as one (a bad mix fails here, before
    the file is touched); a given key also leaves the `multi_label:` block, so that it holds
    on multi-label data too."""
    values = project.params("train").overlay(given)
    return validated(TrainParams, values, "the run's train parameters")


@flow(name="pipeline", flow_run_name=stage_run_name("pipeline"), log_prints=True)
def pipeline_flow(
    root: str = ".",
    force: bool = False,
    until: str | None = None,
    train: TrainOverrides = TrainOverrides(),
) -> dict:
    """Run every stale stage of dvc.yaml in dependency order and record it in dvc.lock.

    With `until`, only that stage and the stages it depends on. `train` (typed fields in
    the on-demand deployment's form): the keys given (not None) are checked against the
    whole recipe, then written into params/train.yaml, so the run is recorded as usual.
    """

    log = get_run_logger()
    project = Project(Path(root).resolve())
    with project_lock(project, "pipeline flow run", on_wait=log.warning):
        return _pipeline(project, force, until, train, log)


def _pipeline(project: Project, force: bool, until: str | None, train: TrainOverrides, log):
    from dvc.repo import Repo, lock_repo
    from dvc.stage import PipelineStage

    given = train.model_dump(exclude_none=True)
    if given and (changed := project.set_params("train", merged(project, given))):
        log.info("params/train.yaml: set %s from the run's parameters", ", ".join(changed))
    project.validate_all()
    ran: dict[str, dict] = {}
    timings: dict[str, float] = {}
    # DVC resolves stage targets against the working directory
    with contextlib.chdir(project.root), Repo(str(project.root)) as repo, lock_repo(repo):
        staleness = Staleness()
        for stage in in_order(repo, until):
            name = stage.addressing
            if not (force and isinstance(stage, PipelineStage)) and not staleness.changed(stage):
                log.info("%s: up to date", name)
                continue
            started = time.perf_counter()
            flow_name = stage_flow_name(stage.cmd) if isinstance(stage, PipelineStage) else None
            if flow_name:
                log.info("%s: running", name)
                # a stage's subflow dies with this process, whose own run keeps beating;
                # without a beat of its own it ends at once instead of joining its
                # heartbeat thread (up to 1 s per stage)
                with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
                    ran[name] = run_stage(project, flow_name)
                staleness.commit(repo, name)
            else:
                log.info("%s: changed, reproducing with DVC", name)
                repo.reproduce(name, single_item=True, force=True)
                ran[name] = {}
            timings[name] = round(time.perf_counter() - started, 1)
    if not ran:
        log.info("everything is up to date")
    return {"ran": list(ran), "seconds": timings, "results": ran}
