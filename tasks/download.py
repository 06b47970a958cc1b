"""Safe downloads into data/: http(s) only, public hosts only, bounded, checked, atomic.

A URL from a third party (a scraped list, a partner's manifest) must not make
collect fetch from this machine or its network (server-side request forgery):
every hop's host is resolved once, each address is checked (`address_refusal`),
and the connection goes to the address that was checked, with the URL's name
as Host header and TLS server name, so a DNS answer that changes between the
check and the connection (DNS rebinding) cannot slip past. Redirects are
followed here, hop by hop, each hop vetted the same way.

A download streams into a temp file beside its destination and is renamed
into place only after every check passed, so a failure, a crash or a kill
never leaves a partial image in data/. Transient failures (timeouts, dropped
connections, HTTP 5xx/429) are retried by Prefect with exponential backoff;
permanent ones (HTTP 404, wrong content type, too large, not an image) are
not, and every final failure becomes a refusal with a reason.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
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
from tasks.secrets import mask_url

# Generic binary types some servers send for images; the magic check decides.
BINARY_TYPES = {"application/octet-stream", "binary/octet-stream", "application/binary"}
TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}
CHUNK = 64 * 1024
MAX_REDIRECTS = 5
# Shared address space for carrier-grade NAT (RFC 6598): `ipaddress` has no flag for it.
CGNAT = ipaddress.ip_network("100.64.0.0/10")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class DownloadLimits:
    """How long, how big and how persistent a download may be."""

    timeout: float = 30.0  # seconds for one attempt: connect, headers and the whole body
    max_bytes: int = 50 * 2**20  # the largest file accepted, downloaded or local (--max-mb)
    retries: int = 3
    backoff: float = 1.0  # seconds before the first retry, doubled for each next one
    workers: int = 8  # downloads in flight at once
    allow_private: bool = False  # loopback, private and CGNAT hosts too (--allow-private)


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


def address_refusal(ip: IPAddress, allow_private: bool = False) -> str | None:
    """Why collect must not connect to `ip` (the detail of a `private_address` refusal), or None.

    Always refused: unspecified (0.0.0.0 and :: reach this machine), link-local
    (169.254.0.0/16 and fe80::/10: cloud metadata services answer there), multicast and
    reserved. Refused unless `allow_private`: loopback, private (RFC 1918, IPv6 ULA),
    carrier-grade NAT and any other address that is not globally routable.
    """
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_unspecified:
        return f"{ip} is the unspecified address (it reaches this machine): always refused"
    if ip.is_link_local:
        return f"{ip} is link-local (cloud metadata services answer there): always refused"
    if ip.is_multicast:
        return f"{ip} is a multicast address: always refused"
    if ip.is_loopback:
        kind = "loopback"
    elif ip in CGNAT:
        kind = "carrier-grade NAT (100.64.0.0/10)"
    elif ip.is_reserved:
        return f"{ip} is a reserved address: always refused"
    elif ip.is_private:
        kind = "private"
    elif not ip.is_global:
        kind = "non-public"
    else:
        return None
    if allow_private:
        return None
    return f"{ip} is a {kind} address (--allow-private, or allow_private: true, fetches it)"


def vetted_address(host: str, port: int, allow_private: bool) -> IPAddress:
    """The one address of `host` to connect to: resolved once, the first that passes
    address_refusal; DownloadRefused('private_address') when none does."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DownloadRefused("connection_error", f"cannot resolve {host}: {exc}", True) from exc
    refusals = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])  # fe80::1%eth0
        why = address_refusal(ip, allow_private)
        if why is None:
            return ip
        refusals.append(why)
    if not refusals:
        raise DownloadRefused("connection_error", f"{host} has no address", True)
    literal = host.strip("[]") == str(ipaddress.ip_address(infos[0][4][0].partition("%")[0]))
    raise DownloadRefused("private_address", refusals[0] if literal else f"{host}: {refusals[0]}")


def vetted_request(client: httpx.Client, url: httpx.URL, allow_private: bool) -> httpx.Request:
    """A GET of `url` that connects to its host's vetted address, not to the name again."""
    if url.scheme not in ("http", "https"):
        raise DownloadRefused("bad_scheme", f"{mask_url(str(url))} is not http(s)")
    host = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS and TLS see it
    port = url.port or (443 if url.scheme == "https" else 80)
    ip = vetted_address(host, port, allow_private)
    extensions = {"sni_hostname": host} if url.scheme == "https" else {}
    return client.build_request(
        "GET",
        url.copy_with(host=str(ip)),
        headers={"Host": url.netloc.decode("ascii")},  # the name (and port) the URL gave
        extensions=extensions,
    )


def fetch(url: str, dest: Path, limits: DownloadLimits) -> Downloaded:
    """One attempt: stream `url` to `dest` atomically, or raise DownloadRefused."""
    deadline = time.monotonic() + limits.timeout
    target = httpx.URL(url)
    try:
        with httpx.Client(
            timeout=httpx.Timeout(limits.timeout),
            follow_redirects=False,  # followed below, each hop vetted
            trust_env=False,  # a proxy would connect to names, not to the vetted address
            headers={"User-Agent": "visiontune"},
        ) as client:
            for _hop in range(MAX_REDIRECTS + 1):
                request = vetted_request(client, target, limits.allow_private)
                response = client.send(request, stream=True)
                try:
                    if response.is_redirect:
                        target = target.join(response.headers["location"])
                        if target.scheme not in ("http", "https"):
                            raise DownloadRefused(
                                "bad_scheme", f"redirected to {mask_url(str(target))}"
                            )
                        continue
                    return _save(response, dest, limits, deadline)
                finally:
                    response.close()
            raise DownloadRefused("http_error", f"more than {MAX_REDIRECTS} redirects")
    except httpx.TimeoutException as exc:
        raise DownloadRefused(
            "timeout", f"{type(exc).__name__} after {limits.timeout:g} s", True
        ) from exc
    except httpx.UnsupportedProtocol as exc:
        raise DownloadRefused("bad_scheme", str(exc)) from exc
    except httpx.InvalidURL as exc:
        raise DownloadRefused("bad_scheme", f"not a valid URL: {exc}") from exc
    except httpx.TransportError as exc:
        raise DownloadRefused("connection_error", f"{type(exc).__name__}: {exc}", True) from exc


def _save(
    response: httpx.Response, dest: Path, limits: DownloadLimits, deadline: float
) -> Downloaded:
    """Stream an answered request's body to `dest` atomically after checking its headers."""
    if response.status_code >= 400:
        raise DownloadRefused(
            "http_error",
            f"HTTP {response.status_code} {response.reason_phrase}",
            transient=response.status_code in TRANSIENT_STATUS,
        )
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type and not (content_type.startswith("image/") or content_type in BINARY_TYPES):
        raise DownloadRefused("wrong_type", f"Content-Type is {content_type}")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise DownloadRefused("too_large", f"Content-Length {declared} > {limits.max_bytes} bytes")
    digest, size = hashlib.sha256(), 0
    with atomic_path(dest) as tmp:
        with tmp.open("wb") as fh:
            for chunk in response.iter_bytes(CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise DownloadRefused("too_large", f"more than {limits.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise DownloadRefused(
                        "timeout", f"not complete after {limits.timeout:g} s", True
                    )
                digest.update(chunk)
                fh.write(chunk)
        sniff_image(tmp)
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


def _run_name() -> str:
    """The task run's name in the UI, with any password in the URL masked."""
    from prefect.runtime import task_run

    return f"download {mask_url(str(task_run.parameters.get('url', '')))}"


@task(
    name="download",
    task_run_name=_run_name,
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
