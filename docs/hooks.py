"""mkdocs hook: the reference pages, generated from the code at every build.

Every params key (type, default, limits, description) comes from the pydantic models in
params/schema.py and every CLI command and option from the typer app, so the reference
cannot drift from the code and no generated page is committed.
"""

from __future__ import annotations

import enum
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

# the project's own code, not the installed copy, is what the pages describe
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GENERATED = {
    "reference/params.md": "params_page",
    "reference/cli.md": "cli_page",
}

_LIMITS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥"}


def _cell(text: str) -> str:
    """Text that stays inside one Markdown table cell."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    for i in range(0, len(parts), 2):  # outside code spans: <label> is text, not an HTML tag
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(parts).strip()


def type_name(annotation: Any) -> str:
    """A short, readable name of a field's type: `int`, `"a" | "b"`, `list[str] | None`."""
    if annotation is type(None):
        return "null"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def limits(info: Any) -> str:
    """The field's bounds (ge/gt/le/lt/min_length) from its pydantic metadata."""
    found = []
    for item in info.metadata:
        for attr, sign in _LIMITS.items():
            value = getattr(item, attr, None)
            if value is not None:
                found.append(f"{sign} {value}")
    return ", ".join(found)


def default(info: Any) -> str:
    if info.default_factory is not None:
        value = info.default_factory()
        models = isinstance(value, dict) and all(isinstance(v, BaseModel) for v in value.values())
        if value and models:
            return "see below"
    elif info.default is PydanticUndefined:
        return "required"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "`null`"
    return f"`{value}`" if isinstance(value, str) and value else f"`{value!r}`"


def model_table(model: type[BaseModel]) -> list[str]:
    lines = ["| key | type | default | limits | description |", "|---|---|---|---|---|"]
    for name, info in model.model_fields.items():
        lines.append(
            f"| `{name}` | {_cell(type_name(info.annotation))} | {_cell(default(info))} | "
            f"{_cell(limits(info))} | {_cell(info.description or '')} |"
        )
    return lines


def params_page() -> str:
    """Markdown for every params file: one table per pydantic model."""
    from params import schema

    out = [
        "# Reference: params",
        "",
        "One YAML file per stage under `params/`, validated by these models before any work "
        "starts (`visiontune check-params` validates without running). This page is "
        "generated from `params/schema.py` when the site is built.",
        "",
    ]
    for stage, model in schema.STAGE_MODELS.items():
        doc = (model.__doc__ or "").strip().splitlines()
        out += [f"## `params/{stage}.yaml`", "", doc[0] if doc else "", "", *model_table(model), ""]
        if stage == "tune":
            out += [
                "Each entry of `space:` is one of these (the `type` key picks which):",
                "",
            ]
            for dim in (schema.FloatDim, schema.IntDim, schema.CategoricalDim):
                out += [f"### `{dim.__name__}`", "", *model_table(dim), ""]
            space = schema.TuneParams.model_fields["space"].default_factory()
            dims = {key: dim.model_dump() for key, dim in space.items()}
            dumped = yaml.safe_dump({"space": dims}, default_flow_style=None, sort_keys=False)
            out += ["The default space:", "", "```yaml", dumped.strip(), "```", ""]
    return "\n".join(out)


def _param_type(param: Any) -> str:
    """The parameter's type: its choices, its annotation, or click's own type name."""
    descriptor = getattr(param, "type_descriptor", None)
    annotation = descriptor.annotation if descriptor else None
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        kind = " | ".join(f"`{m.value}`" for m in annotation)
    elif getattr(param, "is_flag", False):
        kind = "flag"
    elif annotation is not None:
        kind = type_name(annotation)
    else:
        kind = param.type.name.lower()
    bounds = [f"≥ {param.min}" if getattr(param, "min", None) is not None else ""]
    bounds.append(f"≤ {param.max}" if getattr(param, "max", None) is not None else "")
    return ", ".join([kind, *(b for b in bounds if b)])


def _option_row(param: Any) -> str:
    """One table row for a click parameter (typer ships its own copy of click: duck typed)."""
    value = param.default
    if isinstance(value, enum.Enum):
        value = value.value
    if param.param_type_name == "argument":
        name = f"`{param.name.upper()}`"
        dflt = "required" if param.required else ("" if value in (None, ()) else f"`{value}`")
    else:
        name = " / ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
        dflt = "required" if param.required else ("" if value in (None, ()) else f"`{value!r}`")
    help_text = getattr(param, "help", "") or ""
    return f"| {name} | {_cell(_param_type(param))} | {_cell(dflt)} | {_cell(help_text)} |"


def _commands(group: Any, prefix: str) -> list[tuple[str, Any]]:
    found = []
    if hasattr(group, "commands"):
        for name in sorted(group.commands):
            command = group.commands[name]
            if command.hidden:
                continue
            path = f"{prefix} {name}"
            if hasattr(command, "commands"):
                found += _commands(command, path)
            else:
                found.append((path, command))
    return found


def cli_page() -> str:
    """Markdown for every CLI command and option, walked from the typer app's click tree."""
    import typer

    from flows.cli import app

    root = typer.main.get_command(app)
    out = [
        "# Reference: CLI",
        "",
        "Every `visiontune` command and option; `visiontune COMMAND --help` prints the same. "
        "This page is generated from the typer app when the site is built.",
        "",
    ]
    for path, command in _commands(root, "visiontune"):
        help_text = re.split(r"\n\s*\n", (command.help or "").strip())[0]
        out += [f"## `{path}`", "", " ".join(help_text.split()), ""]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        params = [p for p in params if p.name not in ("help",)]
        if params:
            out += ["| option | type | default | what it does |", "|---|---|---|---|"]
            out += [_option_row(p) for p in params]
            out.append("")
    return "\n".join(out)


def on_files(files: Any, config: Any) -> Any:
    """Add the generated reference pages to the site."""
    from mkdocs.structure.files import File

    for path, render in GENERATED.items():
        files.append(File.generated(config, path, content=globals()[render]()))
    return files
