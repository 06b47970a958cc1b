"""Retake the manual's Prefect UI screenshots with headless Chromium against a real server.

    make demo                     # a run to show; it leaves the project's server running
    visiontune serve &            # once, so the on-demand deployment exists (then stop it)
    python docs/screenshots.py    # → docs/ui-pipeline-run.png, ui-confusion-artifact.png,
                                  #   ui-on-demand-form.png

Chromium: `apt-get install chromium` (Debian) or any Chromium/Chrome on PATH. A page whose
subject is missing (no pipeline run yet, no on-demand deployment) is skipped with a line.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flows.project import Project
from flows.project.server import running_server

WINDOW = "1400,1000"  # the window a person reads the UI in (the artifact pane fits it)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def latest(api: str, what: str, body: dict) -> str | None:
    """The id of the newest object of `what` (flow_runs, artifacts, deployments) matching."""
    reply = httpx.post(f"{api}/{what}/filter", json={**body, "limit": 1}, timeout=30)
    reply.raise_for_status()
    found = reply.json()
    return found[0]["id"] if found else None


def pages(api: str) -> dict[str, str | None]:
    """Screenshot file → the UI path that shows it (None: nothing to show yet)."""
    run = latest(
        api,
        "flow_runs",
        {"flows": {"name": {"any_": ["pipeline"]}}, "sort": "START_TIME_DESC"},
    )
    confusion = latest(
        api,
        "artifacts",
        {"artifacts": {"key": {"any_": ["evaluate-confusion"]}}, "sort": "CREATED_DESC"},
    )
    form = latest(
        api,
        "deployments",
        {"deployments": {"name": {"any_": ["on-demand"]}}, "sort": "CREATED_DESC"},
    )
    return {
        "ui-pipeline-run.png": run and f"/runs/flow-run/{run}",
        "ui-confusion-artifact.png": confusion and f"/artifacts/artifact/{confusion}",
        "ui-on-demand-form.png": form and f"/deployments/deployment/{form}/run",
    }


def screenshot(browser: str, url: str, out: Path) -> None:
    subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={WINDOW}",
            "--virtual-time-budget=30000",
            f"--screenshot={out}",
            url,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("."), help="the project folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    browser = next((b for b in map(shutil.which, BROWSERS) if b), None)
    if browser is None:
        print("error: no Chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 1
    info = running_server(Project(args.project.resolve()))
    if info is None:
        print("error: the project's Prefect server is not running: visiontune server start")
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for name, path in pages(info.api_url).items():
        if path is None:
            print(f"skipped {name}: nothing to show yet (see this script's docstring)")
            continue
        screenshot(browser, info.ui_url + path, args.out / name)
        print(f"wrote {args.out / name} from {info.ui_url + path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
