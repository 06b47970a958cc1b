"""dvc.yaml agrees with the stage registry, and every stage's code deps are complete."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows.stages import PACKAGES, STAGES, _docstring_only, code_deps
from params import STAGE_MODELS
from tests.conftest import REPO
from tests.project import sh


@pytest.fixture(scope="module")
def dvc_stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _params_files(entry: dict) -> set[str]:
    names = set()
    for item in entry.get("params", []):
        key = next(iter(item)) if isinstance(item, dict) else item
        names.add(key.removeprefix("params/").removesuffix(".yaml"))
    return names


def test_dvc_yaml_has_the_registry_stages_cmds_and_params(dvc_stages):
    assert list(dvc_stages) == list(STAGES)
    for name, stage in STAGES.items():
        assert dvc_stages[name]["cmd"] == stage.cmd
        assert _params_files(dvc_stages[name]) == set(stage.params), name
        assert set(stage.params) <= set(STAGE_MODELS)


def test_dvc_yaml_tracks_the_params_the_schema_says_change_results(dvc_stages):
    for name, stage in STAGES.items():
        listed = [
            {k: v} if v else k
            for item in dvc_stages[name]["params"]
            for k, v in (item.items() if isinstance(item, dict) else [(item, None)])
        ]
        assert listed == stage.params_entries(), f"{name}: run python -m flows.stages --write"
    tune, train = STAGES["tune"].tracked_params(), STAGES["train"].tracked_params()
    for key in ("storage", "n_jobs", "parallel", "dask_address", "heartbeat_interval"):
        assert key not in tune["params/tune.yaml"]
    for key in ("num_workers", "compile"):
        assert key not in tune["params/train.yaml"] and key not in train["params/train.yaml"]
    assert "n_trials" in tune["params/tune.yaml"] and "lr" in train["params/train.yaml"]


def _stage_repo(root: Path) -> Path:
    """A real git + DVC repo whose stages track the params exactly as dvc.yaml does, with
    trivial commands (what they compute does not matter, only what makes them stale)."""
    shutil.copytree(REPO / "params", root / "params", ignore=shutil.ignore_patterns("*.py"))
    stages = {
        name: {
            "cmd": f"echo {name} > {name}.txt",
            "params": STAGES[name].params_entries(),
            "outs": [f"{name}.txt"],
        }
        for name in ("tune", "train", "evaluate")
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "repro", "-q", cwd=root)
    return root


def _set(root: Path, stage: str, **values) -> None:
    path = root / "params" / f"{stage}.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), **values}))


def _stale(root: Path) -> set[str]:
    from dvc.repo import Repo

    with contextlib.chdir(root), Repo(str(root)) as repo:
        return set(repo.status())


def test_execution_only_params_make_no_stage_stale_and_real_ones_do(tmp_path):
    root = _stage_repo(tmp_path)
    assert _stale(root) == set()
    _set(root, "tune", storage="sqlite:///elsewhere.db", n_jobs=4, parallel="process")
    _set(root, "tune", dask_address="tcp://10.0.0.5:8786", torch_threads=2, grace_period=90)
    _set(root, "train", num_workers=4, compile=True)
    _set(root, "evaluate", batch_size=256)
    assert _stale(root) == set()  # where and how fast: nothing to rerun
    _set(root, "evaluate", top_k=2)
    assert _stale(root) == {"evaluate"}
    _set(root, "train", lr=0.01)
    assert _stale(root) == {"evaluate", "tune", "train"}  # tune searches around train.yaml
    sh("dvc", "repro", "-q", cwd=root)
    _set(root, "tune", n_trials=7)
    assert _stale(root) == {"tune"}


def test_a_params_file_lacking_a_tracked_key_is_named_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    shutil.copytree(REPO / "params", tmp_path / "params")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    train = yaml.safe_load((tmp_path / "params" / "train.yaml").read_text())
    del train["lr"], train["num_workers"]  # a tracked key and an execution-only one
    (tmp_path / "params" / "train.yaml").write_text(yaml.safe_dump(train))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["stage", "train"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "error: params/train.yaml: write lr (the default is fine): dvc.yaml tracks every key "
        "that can change results, and DVC needs each in the file"
    ]


def test_every_stage_depends_on_what_it_reads_and_all_code_it_can_import(dvc_stages):
    for name, stage in STAGES.items():
        deps = set(dvc_stages[name]["deps"])
        needed = set(stage.reads) | set(code_deps(stage, REPO))
        assert not needed - deps, f"dvc.yaml stage {name} lacks deps (python -m flows.stages)"
        code = {d for d in deps if d.split("/")[0] in PACKAGES}
        assert not code - needed, f"dvc.yaml stage {name} lists code it does not import"


def test_a_changed_balance_plan_makes_tune_and_train_stale(dvc_stages):
    for name in ("tune", "train"):
        assert "artifacts/augment/balance.json" in dvc_stages[name]["deps"]


_LOADED = """
import json, sys
from pathlib import Path
root = Path(sys.argv[1]).resolve()
packages = tuple(sys.argv[2].split(","))
result = {}
for name, module in json.loads(sys.argv[3]).items():
    for loaded in [m for m in sys.modules if m.split(".")[0] in packages]:
        del sys.modules[loaded]
    __import__(module)
    files = set()
    for mod in list(sys.modules.values()):
        path = getattr(mod, "__file__", None)
        if path and Path(path).resolve().is_relative_to(root):
            files.add(Path(path).resolve().relative_to(root).as_posix())
    result[name] = sorted(files)
print(json.dumps(result))
"""


def test_modules_a_stage_flow_loads_are_its_code_deps(dvc_stages):
    """The static import walk is checked against what importing each flow really loads."""
    modules = {name: stage.module for name, stage in STAGES.items()}
    out = subprocess.run(
        [sys.executable, "-c", _LOADED, str(REPO), ",".join(PACKAGES), json.dumps(modules)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    for name, files in loaded.items():
        deps = set(dvc_stages[name]["deps"])
        code = {f for f in files if f.split("/")[0] in PACKAGES}
        missing = {f for f in code if not _docstring_only(REPO / f)} - deps
        assert not missing, f"stage {name} loads {sorted(missing)}, not in its dvc.yaml deps"
        assert f"{modules[name].replace('.', '/')}.py" in files
