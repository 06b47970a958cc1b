"""A visiontune project: where it keeps things, relative to its root (where dvc.yaml is).

Beside it: `server` (the project's Prefect server), `dag` (what DVC says is stale, in
which order) and `environment` (the settings every visiontune process starts with).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from params import STAGE_MODELS, AugmentParams, ParamsError, load_params
from params.schema import _Params


@dataclass(frozen=True)
class Project:
    root: Path

    @classmethod
    def find(cls, start: Path | None = None) -> Project:
        """The nearest folder at or above `start` holding dvc.yaml (else `start` itself)."""
        here = (start or Path.cwd()).resolve()
        for folder in (here, *here.parents):
            if (folder / "dvc.yaml").is_file():
                return cls(folder)
        return cls(here)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def prefect_home(self) -> Path:
        return self.root / ".prefect"

    def artifacts(self, stage: str) -> Path:
        return self.root / "artifacts" / stage

    def params_file(self, stage: str) -> Path:
        return self.root / "params" / f"{stage}.yaml"

    def params(self, stage: str) -> _Params:
        """The stage's validated params; an augment `custom:` list is checked against
        albumentations too (params/ knows no transforms)."""
        path = self.params_file(stage)
        params = load_params(STAGE_MODELS[stage], path)
        if isinstance(params, AugmentParams) and params.custom:  # albumentations: seconds
            from tasks.transforms import check_custom

            error = check_custom(params.custom, path)
            if error:
                raise ParamsError(error)
        return params

    def set_params(self, stage: str, params: _Params) -> list[str]:
        """Write the values of `params` that differ into params/<stage>.yaml, comments kept
        as `dvc exp run -S` keeps them, so the run they start is recorded like any other."""
        from dvc.utils.serialize import modify_yaml

        current = self.params(stage).model_dump(mode="json")
        wanted = params.model_dump(mode="json")
        changed = [key for key, value in wanted.items() if current.get(key) != value]
        if changed:
            with modify_yaml(self.params_file(stage)) as data:
                for key in changed:
                    data[key] = wanted[key]
        return changed

    def validate_all(self) -> dict[str, _Params]:
        """Every params file (stages, retrain, crossval), so a bad value fails before any
        work starts; all problems are reported together."""
        params, errors = {}, []
        for name in STAGE_MODELS:
            try:
                params[name] = self.params(name)
            except ParamsError as exc:
                errors.append(str(exc))
        if errors:
            raise ParamsError("\n".join(errors))
        return params

    @property
    def models(self) -> Path:
        """The model registry: registry.json and versions/v<N>/."""
        return self.root / "models"
