import yaml
from typer.testing import CliRunner

from flows.cli import app
from tasks.sources import safe_label
from tests.conftest import REPO
from tests.images import write_image_folder
from tests.project import make_project, sh


def _collect(project, *args):
    return sh("visiontune", "collect", *args, cwd=project).stdout.replace("\n", "")


def test_folder_collect_is_idempotent_and_reports_changes(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=3, classes=("Red Things", "blue"))
    project = make_project(tmp_path / "project")
    out = _collect(project, "folder", str(source))
    assert "6 new, 0 changed, 0 unchanged" in out
    assert sorted(p.name for p in (project / "data").iterdir()) == ["blue", "red_things"]
    first = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]

    assert "0 new, 0 changed, 6 unchanged" in _collect(project, "folder", str(source))
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] == first

    write_image_folder(source, per_class=1, seed=7, classes=("blue",))
    assert "1 new, 0 changed, 6 unchanged" in _collect(project, "folder", str(source))
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] != first


def test_demo_collect_reproduces_the_committed_data_version(tmp_path, prefect_server):
    """The demo set installs from the npm registry with identical bytes: data.dvc matches."""
    project = make_project(tmp_path / "project")
    out = _collect(project, "demo")
    assert "600 new" in out
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    collected = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]
    assert collected["md5"] == committed["md5"]
    assert collected["nfiles"] == committed["nfiles"] == 600


def test_folder_collect_errors_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["collect", "folder", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_safe_label():
    assert safe_label("Food & Drink") == "food_drink"
    assert safe_label("  ../etc ") == "etc"
