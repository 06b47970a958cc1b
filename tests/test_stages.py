"""dvc.yaml agrees with the stage registry, and every stage's code deps are complete."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from flows.stages import PACKAGES, STAGES, _docstring_only, code_deps
from params import STAGE_MODELS
from tests.conftest import REPO


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
