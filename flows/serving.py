"""Serve deployments from this machine, and stop cleanly on Ctrl-C or SIGTERM.

Prefect's own `serve` handles SIGTERM by calling its async stop without awaiting it and
exiting inside the event loop: a traceback, and the run in flight is left RUNNING in the UI
although its process is gone. Here both signals stop the runner from inside its loop, which
cancels the runs in flight, and any run of ours still not final afterwards (its process died
with the signal before it could report) is marked crashed, so the UI never shows a ghost.
"""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from prefect.runner import Runner


@dataclass
class Stopped:
    """How serving ended: the signal that stopped it and the runs it ended on the way."""

    signal: str
    ended: list[str] = field(default_factory=list)  # "<run name> (<state>)" per run in flight


class _StoppableRunner(Runner):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stopped_by: str | None = None
        self.stopped_at = datetime.now(UTC)
        self._stop_task: asyncio.Task | None = None

    def handle_sigterm(self, signum: int = signal.SIGTERM, *args: Any) -> None:
        """Both signals land here (Runner.start installs this one for SIGTERM)."""
        if self.stopped_by is not None:  # a second signal while stopping: stop waiting
            raise KeyboardInterrupt
        self.stopped_by = signal.Signals(signum).name
        self.stopped_at = datetime.now(UTC)
        if not self.started or self._loop is None:
            raise KeyboardInterrupt  # still registering: nothing runs yet
        # a signal handler runs between two bytecodes of the loop's own thread
        self._stop_task = self._loop.create_task(self.astop())


def serve(*deployments: Any, limit: int = 1) -> Stopped:
    """Serve until Ctrl-C or SIGTERM; return once every run it started has a final state."""
    runner = _StoppableRunner(limit=limit, pause_on_shutdown=True)
    ids: list[UUID] = [runner.add_deployment(d) for d in deployments]
    previous = signal.signal(signal.SIGINT, runner.handle_sigterm)
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        runner.stopped_by = runner.stopped_by or "SIGINT"
    finally:
        signal.signal(signal.SIGINT, previous)
    return Stopped(runner.stopped_by or "end", _end_leftovers(ids, runner.stopped_at))


def _end_leftovers(deployment_ids: list[UUID], since: datetime) -> list[str]:
    """Mark crashed each run of these deployments (and its subflows) still not final; name
    every top-level run that ended since the stop, with its final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterEndTime,
        FlowRunFilterParentFlowRunId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    live = FlowRunFilterState(
        type=FlowRunFilterStateType(
            any_=[StateType.RUNNING, StateType.PENDING, StateType.CANCELLING]
        )
    )
    ours = DeploymentFilter(id=DeploymentFilterId(any_=deployment_ids))
    crashed = Crashed(message="`visiontune serve` was stopped")
    with get_client(sync_client=True) as client:
        for run in client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=live), deployment_filter=ours
        ):
            client.set_flow_run_state(run.id, crashed, force=True)
        tops = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(end_time=FlowRunFilterEndTime(after_=since)),
            deployment_filter=ours,
        )
        parents = [run.id for run in tops]
        while parents:  # a subflow whose process died with the signal never reported
            below = FlowRunFilterParentFlowRunId(any_=parents)
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=below)
            )
            for run in children:
                if not (run.state and run.state.is_final()):
                    client.set_flow_run_state(run.id, crashed, force=True)
            parents = [run.id for run in children]
    return [f"{run.name} ({run.state.name})" for run in tops if run.state]
