"""Process environment for quiet, offline, project-local runs.

Must run before prefect is imported: Prefect reads its settings at import.
"""

from __future__ import annotations

import os

from flows.project import Project

QUIET_OFFLINE = {
    "DVC_NO_ANALYTICS": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # a temporary server needs longer than the default 20 s to start on 2 cores
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def configure(project: Project) -> str | None:
    """Set defaults (never override the user's) and point Prefect at the project's server.

    Returns the Prefect API URL in use, or None when Prefect will start a
    temporary server for this process.
    """
    from flows.project.server import running_server

    for key, value in QUIET_OFFLINE.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("PREFECT_HOME", str(project.prefect_home))
    if not os.environ.get("PREFECT_API_URL"):
        server = running_server(project)
        if server:
            os.environ["PREFECT_API_URL"] = server.api_url
    return os.environ.get("PREFECT_API_URL")


def ensure_server(project: Project) -> str | None:
    """For `visiontune stage`, the command of every dvc.yaml stage: with no Prefect API set or
    running, start the project's server (as `visiontune server start` does) instead of a
    temporary one per process. A `dvc repro` then pays one start instead of one per stage,
    and its runs stay in the UI. Returns the UI URL when this call started the server."""
    from flows.project.server import start_server

    if os.environ.get("PREFECT_API_URL"):
        return None
    info = start_server(project)
    os.environ["PREFECT_API_URL"] = info.api_url
    return info.ui_url
