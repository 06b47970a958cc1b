"""The stage registry: every pipeline stage named once, with its flow, params and inputs.

The CLI's stage names, `run_stage`, params validation and the test that checks
dvc.yaml all derive from `STAGES`. Flows are named by import path so that
reading the registry (e.g. for `visiontune --help`) does not import Prefect.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("flows", "tasks", "params")  # the project's own code, as dvc.yaml deps


@dataclass(frozen=True)
class Stage:
    name: str
    flow: str  # "module:function", imported only when the stage runs
    params: tuple[str, ...]  # params/<name>.yaml files, in the flow's argument order
    reads: tuple[str, ...] = ()  # files of other stages it reads (dvc.yaml deps)

    @property
    def module(self) -> str:
        return self.flow.partition(":")[0]

    def load(self) -> Callable[..., dict]:
        module, _, attr = self.flow.partition(":")
        return getattr(importlib.import_module(module), attr)

    @property
    def cmd(self) -> str:
        return f"visiontune stage {self.name}"


CACHE_INDEX = "artifacts/clean/cache_index.parquet"  # stands for the cached images
SPLIT = "artifacts/split/split.parquet"
TRAIN_INPUTS = (
    CACHE_INDEX,
    SPLIT,
    "artifacts/augment/train.yaml",
    "artifacts/augment/eval.yaml",
    "artifacts/augment/balance.json",
)

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("clean", "flows.clean:clean_flow", ("clean",), ("data",)),
        Stage("split", "flows.split:split_flow", ("split",), ("artifacts/clean/manifest.parquet",)),
        Stage("augment", "flows.augment:augment_flow", ("augment", "train"), (SPLIT,)),
        Stage("tune", "flows.tune:tune_flow", ("tune", "train"), TRAIN_INPUTS),
        Stage(
            "train",
            "flows.train:train_flow",
            ("train",),
            (*TRAIN_INPUTS, "artifacts/tune/best_params.yaml"),
        ),
        # the model file carries its own preprocessing: evaluate needs no augment output
        Stage(
            "evaluate",
            "flows.evaluate:evaluate_flow",
            ("evaluate",),
            (CACHE_INDEX, SPLIT, "artifacts/train/model.pt"),
        ),
    )
}


def _imports(path: Path, root: Path) -> set[str]:
    """Project modules that `path` imports anywhere in its body (inside functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    files = set()
    for name in found:
        if name.split(".")[0] not in PACKAGES:
            continue
        base = root.joinpath(*name.split("."))
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                files.add(candidate.relative_to(root).as_posix())
    return files


def code_deps(stage: Stage, root: Path) -> list[str]:
    """Every project source file the stage's flow can import, directly or not.

    A change to any of them can change the stage's outputs, so each must be a dvc.yaml dep
    of the stage (tests/test_stages.py checks this).
    """
    start = root.joinpath(*stage.module.split(".")).with_suffix(".py").relative_to(root)
    seen: set[str] = set()
    todo = [start.as_posix()]
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen.add(rel)
        parts = Path(rel).parts
        for depth in range(1, len(parts)):  # importing a.b.c runs a/__init__ and a/b/__init__
            init = Path(*parts[:depth], "__init__.py").as_posix()
            if (root / init).is_file():
                todo.append(init)
        todo.extend(_imports(root / rel, root) - seen)
    return sorted(rel for rel in seen if not _docstring_only(root / rel))


def _docstring_only(path: Path) -> bool:
    """A package __init__ holding just its docstring cannot change a stage's outputs."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def write_deps(dvc_yaml: Path) -> None:
    """Rewrite each stage's `deps:` list in dvc.yaml from the registry (comments elsewhere
    are kept): what `python -m flows.stages --write` does after a change of imports."""
    root = dvc_yaml.parent
    text = dvc_yaml.read_text()
    for stage in STAGES.values():
        start = text.index("    deps:\n", text.index(f"\n  {stage.name}:\n"))
        end = text.index("    params:\n", start)
        listed = "".join(f"      - {dep}\n" for dep in (*stage.reads, *code_deps(stage, root)))
        text = text[:start] + "    deps:\n" + listed + text[end:]
    dvc_yaml.write_text(text)


if __name__ == "__main__":  # the deps each stage needs in dvc.yaml; --write puts them there
    import sys

    here = Path(__file__).resolve().parent.parent
    if "--write" in sys.argv:
        write_deps(here / "dvc.yaml")
    for stage in STAGES.values():
        print(f"{stage.name}:")
        for dep in (*stage.reads, *code_deps(stage, here)):
            print(f"  - {dep}")
