"""The manual: the site builds strictly, its reference pages cover the code, the README is short
and every relative link in it and in docs/ names a file that exists."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from flows.cli import app
from params.schema import STAGE_MODELS

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
LINK = re.compile(r"\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "-d", str(site)], capture_output=True, text=True, env=env, cwd=config.parent
    )


def test_site_builds_strictly_with_generated_reference(tmp_path):
    result = _mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    params = (tmp_path / "site/reference/params/index.html").read_text()
    cli = (tmp_path / "site/reference/cli/index.html").read_text()
    assert "freeze_epochs" in params and "phash_threshold" in params
    assert "--top-k" in cli and "visiontune collect folder" in cli
    for page in ("ui", "reliability", "security", "deployment", "measurements"):
        assert (tmp_path / "site" / page / "index.html").is_file()


def test_strict_build_fails_on_a_broken_link(tmp_path):
    shutil.copytree(DOCS, tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs/getting-started.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    result = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr


def test_reference_pages_cover_every_params_key_and_cli_option():
    hooks = _hooks()
    params = hooks.params_page()
    for stage, model in STAGE_MODELS.items():
        assert f"## `params/{stage}.yaml`" in params
        for name in model.model_fields:
            assert f"| `{name}` |" in params, (stage, name)
    assert "| `max_side` | int | `128` | ≥ 16, ≤ 4096 |" in params  # type, default, limits

    cli = hooks.cli_page()
    commands = hooks._commands(typer.main.get_command(app), "visiontune")
    assert len(commands) > 15
    for path, command in commands:
        assert f"## `{path}`" in cli
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                assert f"`{param.opts[0]}`" in cli, (path, param.opts)


def test_readme_is_short_and_relative_links_resolve():
    readme = REPO / "README.md"
    assert len(readme.read_text().splitlines()) <= 150
    generated = set(_hooks().GENERATED)
    broken = []
    for page in [readme, *DOCS.rglob("*.md")]:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            resolved = (page.parent / path).resolve()
            in_site = resolved.is_relative_to(DOCS) and resolved.relative_to(DOCS).as_posix()
            if not resolved.exists() and in_site not in generated:
                broken.append(f"{page.relative_to(REPO)}: {target}")
    assert not broken
    assert "docs/ui-pipeline-run.png" in readme.read_text()


def _block_after(page: Path, heading: str) -> list[str]:
    """The commands of the first ```bash block under `heading`, comments dropped."""
    text = page.read_text().split(heading, 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.e2e
def test_the_getting_started_commands_run_on_tiny_data(tmp_path):
    """The 'Your own data' block, line for line, with its two paths pointed at tiny folders."""
    from flows.project import Project
    from flows.project.server import running_server, stop_server
    from tests.images import write_image_folder
    from tests.project import TINY_PARAMS, env, make_project

    commands = _block_after(DOCS / "getting-started.md", "## Your own data")
    assert commands[0] == "visiontune server start" and len(commands) >= 5, commands
    write_image_folder(tmp_path / "images", per_class=6)
    write_image_folder(tmp_path / "new", per_class=1, seed=1)
    root = make_project(tmp_path / "project", {**TINY_PARAMS, "tune": {"n_trials": 0}})
    local = {"path/to/images": str(tmp_path / "images"), "new_photos/": str(tmp_path / "new")}
    server_vars = ("PREFECT_API_URL", "PREFECT_HOME")  # as a user has it: the project's server
    variables = {k: v for k, v in env().items() if k not in server_vars}
    shown = {}
    try:
        for command in commands:
            for doc, here in local.items():
                command = command.replace(doc, here)
            done = subprocess.run(
                ["bash", "-c", command], cwd=root, env=variables, capture_output=True, text=True
            )
            assert done.returncode == 0, (command, done.stderr[-3000:])
            assert "Traceback" not in done.stdout + done.stderr, command
            shown[command.split()[1]] = done.stdout
    finally:
        if running_server(Project(root)):
            stop_server(Project(root))
    assert "accuracy" in shown["metrics"], shown["metrics"]
    assert "http://127.0.0.1:" in shown["server"]  # the UI address
    predictions = root / "artifacts" / "predict" / "predictions.csv"
    assert len(predictions.read_text().splitlines()) == 1 + 3  # a header and 3 images
    log = subprocess.run(["git", "log", "--format=%s"], cwd=root, capture_output=True, text=True)
    assert log.stdout.splitlines()[0] == "my data, my model"
