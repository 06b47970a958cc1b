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
