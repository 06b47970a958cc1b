"""Hostile input that must not reach internal hosts or leak secrets, and params DVC ignores."""

from __future__ import annotations

import contextlib
import ipaddress
import socket

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows import cli
from flows.cli import app
from tasks.download import DownloadLimits, DownloadRefused, address_refusal, fetch
from tests.http_server import GOOD_PNG, ImageServer
from tests.project import make_project

FAST = ("--timeout", "2", "--retries", "0")


@pytest.fixture
def _wide_console(monkeypatch):
    """Rich wraps tables to the terminal width; a wide one keeps each row on one line."""
    monkeypatch.setenv("COLUMNS", "400")
    monkeypatch.setattr(cli.console, "_width", 400)


def _collect(project, *args) -> tuple[str, dict[str, tuple[str, str]]]:
    """`visiontune collect ARGS` in PROJECT: (its output, {source: (reason, detail)})."""
    with contextlib.chdir(project):
        result = CliRunner().invoke(app, ["collect", *args])
    assert result.exit_code == 0, f"{result.output[-4000:]}\n{result.exception!r}"
    assert "Traceback" not in result.output
    refused = {}
    for line in result.stdout.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 3 and cells[1] and cells[0] != "source":
            refused[cells[0]] = (cells[1], cells[2])
    return result.stdout, refused


@pytest.mark.parametrize(
    ("address", "private", "always"),
    [
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("10.1.2.3", True, False),
        ("172.16.0.1", True, False),
        ("192.168.1.1", True, False),
        ("100.64.0.1", True, False),  # CGNAT
        ("fd12:3456::1", True, False),  # IPv6 ULA
        ("::ffff:192.168.0.1", True, False),  # IPv4-mapped
        ("169.254.169.254", True, True),  # cloud metadata
        ("fe80::1", True, True),
        ("0.0.0.0", True, True),
        ("::", True, True),
        ("224.0.0.1", True, True),
        ("ff02::1", True, True),
        ("240.0.0.1", True, True),  # reserved
        ("::ffff:169.254.169.254", True, True),
        ("93.184.215.14", False, False),
        ("2606:4700::6810:84e5", False, False),
    ],
)
def test_the_address_policy(address, private, always):
    ip = ipaddress.ip_address(address)
    assert (address_refusal(ip) is not None) == private
    assert (address_refusal(ip, allow_private=True) is not None) == always


def test_urls_to_internal_hosts_are_refused_unless_allowed_and_redirects_are_vetted(
    tmp_path, prefect_server, _wide_console
):
    project = make_project(tmp_path / "project")
    with ImageServer() as server:
        port = server.httpd.server_address[1]
        server.redirects = {
            "/to-metadata.png": "http://169.254.169.254/latest/meta-data/",
            "/to-zero.png": f"http://0.0.0.0:{port}/good.png",  # 0.0.0.0 reaches this machine
            "/to-private.png": "http://10.255.255.1/x.png",
            "/to-localhost.png": f"http://localhost:{port}/good.png",
        }
        urls = tmp_path / "urls.txt"
        direct = ["/good.png", "/to-good.png", "/to-localhost.png"]
        urls.write_text("".join(f"{server.url(p)} circle\n" for p in [*direct, *server.redirects]))

        out, refused = _collect(project, "urls", str(urls), *FAST)  # no --allow-private
        assert "0 new, 0 changed, 0 unchanged, 6 refused" in out
        assert {reason for reason, _ in refused.values()} == {"private_address"}
        assert all("127.0.0.1 is a loopback address" in d for _, d in refused.values())
        assert sum(server.hits.values()) == 0  # refused before any connection
        assert not (project / "data").exists()

        out, refused = _collect(project, "urls", str(urls), *FAST, "--allow-private")
        assert "3 new, 0 changed, 0 unchanged, 3 refused" in out
        assert refused == {
            server.url("/to-metadata.png"): (
                "private_address",
                "169.254.169.254 is link-local (cloud metadata services answer there): "
                "always refused",
            ),
            server.url("/to-zero.png"): (
                "private_address",
                "0.0.0.0 is the unspecified address (it reaches this machine): always refused",
            ),
            # allowed (a user's own network) and tried: what answers there, if anything, says no
            server.url("/to-private.png"): refused[server.url("/to-private.png")],
        }
        assert refused[server.url("/to-private.png")][0] != "private_address"
        # /good.png directly, after the relative redirect and after the one via localhost;
        # the hop to 0.0.0.0 would have reached this server too, had it not been refused
        assert server.hits["/good.png"] == 3
        sources = pd.read_csv(project / "data" / "sources.csv")
        assert sorted(sources["source"]) == sorted(server.url(p) for p in direct)
        for path in sources["path"]:
            assert (project / "data" / path).read_bytes() == GOOD_PNG


def test_the_connection_goes_to_the_address_that_was_checked(tmp_path, monkeypatch):
    """DNS rebinding: the name answers 127.0.0.1 when checked, then a metadata address.
    The download connects to the checked address (the name is asked once), with the
    name as Host header."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def rebinding_dns(host, port, *args, **kwargs):
        if host != "images.rebind.test":
            return real(host, port, *args, **kwargs)
        asked.append(host)
        address = "127.0.0.1" if len(asked) == 1 else "169.254.169.254"
        return real(address, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_dns)
    limits = DownloadLimits(timeout=2, allow_private=True)
    with ImageServer() as server:
        port = server.httpd.server_address[1]
        seen_host: list[str] = []
        route = server.route

        def recording(h, path):
            seen_host.append(h.headers["Host"])
            route(h, path)

        server.route = recording  # type: ignore[method-assign]
        fetch(f"http://images.rebind.test:{port}/good.png", tmp_path / "a.png", limits)
        assert (tmp_path / "a.png").read_bytes() == GOOD_PNG
        assert asked == ["images.rebind.test"]
        assert seen_host == [f"images.rebind.test:{port}"]
        # the next download asks again, gets the metadata address, and is refused
        with pytest.raises(DownloadRefused) as refusal:
            fetch(f"http://images.rebind.test:{port}/good.png", tmp_path / "b.png", limits)
        assert refusal.value.reason == "private_address"
        assert "169.254.169.254 is link-local" in refusal.value.detail
        assert not (tmp_path / "b.png").exists()


def test_urls_are_shown_and_recorded_with_their_password_masked(
    tmp_path, prefect_server, _wide_console
):
    from tasks.secrets import mask_url

    assert (
        mask_url("postgresql://vt:hunter2@db:5432/optuna") == "postgresql://vt:***@db:5432/optuna"
    )
    assert mask_url("https://u:tok@img.example/a.png?x=1") == "https://u:***@img.example/a.png?x=1"
    assert mask_url("sqlite:///artifacts/tune/study.db") == "sqlite:///artifacts/tune/study.db"
    assert mask_url("https://img.example/a.png") == "https://img.example/a.png"
    project = make_project(tmp_path / "project")
    urls = tmp_path / "urls.txt"
    urls.write_text("http://me:hunter2@127.0.0.1:9/a.png circle\n")
    out, refused = _collect(project, "urls", str(urls), *FAST)
    assert "hunter2" not in out
    assert refused == {
        "http://me:***@127.0.0.1:9/a.png": (
            "private_address",
            "127.0.0.1 is a loopback address (--allow-private, or allow_private: true, fetches it)",
        )
    }


def _params_project(tmp_path, storage: str):
    import shutil

    from tests.conftest import REPO

    shutil.copytree(REPO / "params", tmp_path / "params")
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    tune = tmp_path / "params" / "tune.yaml"
    tune.write_text(tune.read_text().replace("storage: null", f"storage: {storage}"))
    return tmp_path


def test_a_password_in_tune_storage_is_refused_in_one_line_that_never_shows_it(
    tmp_path, monkeypatch
):
    root = _params_project(tmp_path, "postgresql://vt:hunter2@db.internal/optuna")
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["check-params"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output  # one line (the console is wide enough)
    assert "tune.yaml: storage: a password written in the URL would be committed" in lines[0]
    assert "PGPASSWORD" in lines[0] and "${VAR}" in lines[0]
    assert "hunter2" not in result.output


def test_env_references_in_storage_are_expanded_only_where_the_study_opens(tmp_path, monkeypatch):
    from params import TuneParams
    from tasks.secrets import MissingVariable
    from tasks.tune import make_storage, storage_url

    text = "sqlite:///${VT_STUDY_DIR}/s3cret-study.db"
    tune = TuneParams(storage=text)  # a reference is no password: accepted
    assert TuneParams(storage="postgresql://vt:${VT_PW}@db/optuna").storage
    monkeypatch.delenv("VT_STUDY_DIR", raising=False)
    with pytest.raises(
        MissingVariable, match=r"^tune.yaml: storage: \$\{VT_STUDY_DIR\} is not set"
    ):
        storage_url(tune)

    # the command that would run the search says so in one line, before any work
    root = _params_project(tmp_path / "p", text)
    monkeypatch.chdir(root)
    result = CliRunner().invoke(app, ["stage", "tune"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: params/tune.yaml: storage: ${VT_STUDY_DIR} is not set in the environment"
    ]

    monkeypatch.setenv("VT_STUDY_DIR", str(tmp_path / "studies"))
    (tmp_path / "studies").mkdir()
    storage = make_storage(tune, tmp_path / "artifacts")
    storage.create_new_study([], "x")
    assert (tmp_path / "studies" / "s3cret-study.db").is_file()  # the expanded path
    # what Prefect records as the flow parameter, and DVC in dvc.lock, is the reference
    assert tune.model_dump(mode="json")["storage"] == text
    assert "studies" not in tune.model_dump_json()
