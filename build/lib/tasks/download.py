"""Safe downloads into data/: http(s) only, bounded in time and size, checked, atomic.

A download streams into a temp file beside its destination and is renamed
into place only after every check passed, so a failure, a crash or a kill
never leaves a partial image in data/. Transient failures (timeouts, dropped
connections, HTTP 5xx/429) are retried by Prefect with exponential backoff;
permanent ones (HTTP 404, wrong content type, too large, not an image) are
not, and every final failure becomes a refusal with a reason.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from PIL import Image, UnidentifiedImageError
from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from tasks.files import atomic_path

# Generic binary types some servers send for images; the magic check decides.
BINARY_TYPES = {"application/octet-stream", "binary/octet-stream", "application/binary"}
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 64 * 1024


@dataclass(frozen=True)
class DownloadLimits:
    """How long, how big and how persistent a download may be."""

    timeout: float = 30.0  # seconds for one attempt: connect, headers and the whole body
    max_bytes: int = 50 * 2**20  # the largest file accepted, downloaded or local (--max-mb)
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one
    workers: int = 8  # downloads in flight at once


@dataclass(frozen=True)
class Downloaded:
    sha256: str


class DownloadRefused(Exception):
    """A download that did not produce a file; `transient` ones are worth retrying."""

    def __init__(self, reason: str, detail: str, transient: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.transient = transient


def fetch(url: str, dest: Path, limits: DownloadLimits) -> Downloaded:
    """One attempt: stream `url` to `dest` atomically, or raise DownloadRefused."""
    deadline = time.monotonic() + limits.timeout
    try:
        with (
            httpx.Client(
                timeout=httpx.Timeout(limits.timeout),
                follow_redirects=True,
                max_redirects=5,
                headers={"User-Agent": "visiontune"},
            ) as client,
            client.stream("GET", url) as response,
        ):
            if response.url.scheme not in ("http", "https"):
                raise DownloadRefused("bad_scheme", f"redirected to {response.url}")
            if response.status_code >= 400:
                raise DownloadRefused(
                    "http_error",
                    f"HTTP {response.status_code} {response.reason_phrase}",
                    transient=response.status_code in TRANSIENT_STATUS,
                )
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type and not (
                content_type.startswith("image/") or content_type in BINARY_TYPES
            ):
                raise DownloadRefused("wrong_type", f"Content-Type is {content_type}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limits.max_bytes:
                raise DownloadRefused(
                    "too_large", f"Content-Length {declared} > {limits.max_bytes} bytes"
                )
            digest, size = hashlib.sha256(), 0
            with atomic_path(dest) as tmp:
                with tmp.open("wb") as fh:
                    for chunk in response.iter_bytes(CHUNK):
                        size += len(chunk)
                        if size > limits.max_bytes:
                            raise DownloadRefused(
                                "too_large", f"more than {limits.max_bytes} bytes"
                            )
                        if time.monotonic() > deadline:
                            raise DownloadRefused(
                                "timeout", f"not complete after {limits.timeout:g} s", True
                            )
                        digest.update(chunk)
                        fh.write(chunk)
                sniff_image(tmp)
    except httpx.TimeoutException as exc:
        raise DownloadRefused(
            "timeout", f"{type(exc).__name__} after {limits.timeout:g} s", True
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise DownloadRefused("bad_scheme", str(exc)) from exc
    except httpx.TooManyRedirects as exc:
        raise DownloadRefused("http_error", str(exc)) from exc
    except httpx.TransportError as exc:
        raise DownloadRefused("connection_error", f"{type(exc).__name__}: {exc}", True) from exc
    return Downloaded(digest.hexdigest())


def sniff_image(path: Path) -> None:
    """Refuse bytes whose magic Pillow does not recognise as an image (no full decode)."""
    if path.stat().st_size == 0:
        raise DownloadRefused("not_an_image", "empty body")
    try:
        with Image.open(path):
            return
    except (UnidentifiedImageError, OSError) as exc:
        raise DownloadRefused("not_an_image", "the bytes are not an image Pillow knows") from exc
    except Image.DecompressionBombError:
        return  # a real image; clean decides what to do with it


def retry_if_transient(_task: Task, _run: TaskRun, state: State) -> bool:
    """Prefect's retry_condition_fn: retry timeouts and 5xx, never a permanent refusal."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, DownloadRefused) and exc.transient


@task(
    name="download",
    task_run_name="download {url}",
    cache_policy=NO_CACHE,
    retry_condition_fn=retry_if_transient,
)
def download(url: str, dest: Path, limits: DownloadLimits) -> Downloaded:
    return fetch(url, dest, limits)


def download_task(limits: DownloadLimits) -> Task:
    """The download task with the retries and exponential backoff `limits` ask for."""
    return download.with_options(
        retries=limits.retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=limits.backoff)(limits.retries)
        if limits.retries
        else 0,
    )
