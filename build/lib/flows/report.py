"""Prefect artifacts that make each stage readable in the UI.

Images are embedded in markdown as data URIs: image artifacts need a URL, and
the UI must work offline with no file server.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pandas as pd
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(text: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def publish_markdown(key: str, markdown: str, description: str = "") -> None:
    create_markdown_artifact(markdown=markdown, key=artifact_key(key), description=description)


def publish_table(key: str, frame: pd.DataFrame, description: str = "") -> None:
    rows = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    create_table_artifact(table=rows, key=artifact_key(key), description=description)


def image_markdown(png: Path, title: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n"


def publish_image(key: str, png: Path, title: str) -> None:
    publish_markdown(key, image_markdown(png, title), description=title)


class ProgressArtifact:
    """A progress bar in the UI for a long loop: call it with (done, total); it updates
    the artifact only every `step` percent, so a 10k-image loop does not flood the API."""

    def __init__(self, key: str, description: str, step: float = 0.0) -> None:
        self.id = create_progress_artifact(0.0, key=artifact_key(key), description=description)
        self.step, self.last = step, -1.0

    def __call__(self, done: float, total: float) -> None:
        percent = min(100.0, 100.0 * done / max(total, 1e-9))
        if percent - self.last >= self.step or percent >= 100.0:
            self.last = percent
            update_progress_artifact(self.id, percent)
