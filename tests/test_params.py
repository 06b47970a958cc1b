"""Params validation: one-line errors naming file, key and reason, before any work starts."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from flows.project import Project
from params import STAGE_MODELS, ParamsError, SplitParams, TrainParams, load_params
from tests.conftest import REPO


def test_committed_params_files_validate():
    params = Project(REPO).validate_all()
    assert set(params) == set(STAGE_MODELS)  # retrain.yaml and crossval.yaml too
    assert isinstance(params["train"], TrainParams)


def test_every_stage_has_a_model_and_a_yaml():
    for stage in STAGE_MODELS:
        assert (REPO / "params" / f"{stage}.yaml").is_file()


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_value_names_file_key_and_reason(tmp_path):
    path = _write(tmp_path, {"lr": -1})
    with pytest.raises(ParamsError) as err:
        load_params(TrainParams, path)
    message = str(err.value)
    assert message.count("\n") == 0
    assert str(path) in message and "lr" in message and "greater than 0" in message
    assert "-1" in message


def test_unknown_key_is_rejected(tmp_path):
    with pytest.raises(ParamsError, match=r"learning_rate: Extra inputs are not permitted"):
        load_params(TrainParams, _write(tmp_path, {"learning_rate": 0.1}))


def test_cross_field_rules(tmp_path):
    with pytest.raises(ParamsError, match="freeze_epochs"):
        load_params(TrainParams, _write(tmp_path, {"epochs": 2, "freeze_epochs": 3}))
    path = tmp_path / "split.yaml"
    path.write_text("train: 0.5\nval: 0.1\ntest: 0.1\n")
    with pytest.raises(ParamsError, match=r"must be 1\.0"):
        load_params(SplitParams, path)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(TrainParams, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(TrainParams, bad)
    bad.write_text("- a list\n")
    with pytest.raises(ParamsError, match="expected a mapping"):
        load_params(TrainParams, bad)


def test_cli_reports_bad_params_before_any_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params").mkdir()
    for stage in STAGE_MODELS:
        (tmp_path / "params" / f"{stage}.yaml").write_text("{}\n")
    (tmp_path / "params" / "train.yaml").write_text("epochs: 0\n")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run"])
    assert result.exit_code == 2
    assert "params/train.yaml: epochs: Input should be greater than or equal to 1" in (
        result.output.replace("\n", "")
    )
    assert not (tmp_path / "artifacts").exists()


def test_check_params_validates_retrain_and_crossval_too(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    shutil.copytree(REPO / "params", tmp_path / "params")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(tmp_path)
    good = CliRunner().invoke(app, ["check-params"])
    assert good.exit_code == 0, good.output
    assert "retrain.yaml" in good.output and "crossval.yaml" in good.output
    (tmp_path / "params" / "retrain.yaml").write_text("margin: -1\n")
    (tmp_path / "params" / "crossval.yaml").write_text("label_issues: -5\n")
    bad = CliRunner().invoke(app, ["check-params"])
    assert bad.exit_code == 2
    output = bad.output.replace("\n", "")
    assert "retrain.yaml: margin" in output and "crossval.yaml: label_issues" in output


def test_train_names_the_train_yaml_values_a_search_overrode(tmp_path):
    from tasks.tune import apply_best_params, searched_overrides

    best = tmp_path / "best_params.yaml"
    best.write_text(yaml.safe_dump({"params": {"lr": 0.002, "weight_decay": 0.05}}))
    mine = TrainParams(lr=3e-4, weight_decay=0.05)
    message = searched_overrides(mine, apply_best_params(best, mine))
    assert message is not None
    assert "lr 0.0003 → 0.002" in message and "weight_decay" not in message
    assert "n_trials: 0" in message
    assert searched_overrides(mine, mine) is None
    # trial 0 records `auto` resolved: the same head-only epochs are no override
    kept = mine.model_copy(update={"freeze_epochs": mine.head_epochs})
    assert searched_overrides(mine, kept) is None
    longer = mine.model_copy(update={"freeze_epochs": mine.head_epochs + 1})
    assert "freeze_epochs 'auto' → 2" in (searched_overrides(mine, longer) or "")


def test_freeze_epochs_auto_is_a_fifth_of_the_budget():
    assert TrainParams().freeze_epochs == "auto"
    assert [TrainParams(epochs=e).head_epochs for e in (1, 2, 5, 6, 10, 30)] == [1, 1, 1, 1, 2, 6]
    assert TrainParams(epochs=6, freeze_epochs=0).head_epochs == 0
    assert TrainParams(epochs=6, freeze_epochs=3).head_epochs == 3
    with pytest.raises(ValidationError, match="cannot exceed epochs"):
        TrainParams(epochs=2, freeze_epochs=3)
    with pytest.raises(ValidationError):
        TrainParams(freeze_epochs="half")


def test_set_params_writes_only_the_keys_given_and_keeps_the_comments(tmp_path):
    shutil.copytree(REPO / "params", tmp_path / "params")
    project = Project(tmp_path)
    before = (tmp_path / "params" / "train.yaml").read_text()
    current = project.params("train").model_dump()
    given = TrainParams.model_validate({**current, "lr": 0.0042, "epochs": 6})  # epochs: 6 now
    assert project.set_params("train", given) == ["lr"]
    after = (tmp_path / "params" / "train.yaml").read_text()
    assert project.params("train").lr == 0.0042
    assert project.params("train").model_dump(exclude={"lr"}) == load_params(
        TrainParams, REPO / "params" / "train.yaml"
    ).model_dump(exclude={"lr"})
    assert len(after.splitlines()) == len(before.splitlines())
    assert "# head LR (peak)" in after and "# model" in after
    assert project.set_params("train", given) == []


def test_a_run_option_holds_on_multi_label_data_too(tmp_path):
    """`visiontune run --lr …` writes lr and takes it out of train.yaml's `multi_label:`
    block, which would otherwise replace it on multi-label data; the rest of the block stays."""
    from flows.pipeline import merged

    shutil.copytree(REPO / "params", tmp_path / "params")
    project = Project(tmp_path)
    assert "lr" in project.params("train").multi_label
    given = merged(project, {"lr": 0.0042})
    assert project.set_params("train", given) == ["multi_label", "lr"]
    mine = project.params("train")
    assert "lr" not in mine.multi_label and mine.multi_label_recipe().lr == 0.0042
    assert mine.multi_label_recipe().batchnorm == "adapt" and mine.batchnorm == "frozen"


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"lrr": 0.1}, "multi_label: lrr: not keys of this file"),
        ({"lr": -1}, "multi_label.lr: Input should be greater than 0"),
        ({"model": "resnet18"}, "multi_label: model: the same for every kind"),
    ],
)
def test_the_multi_label_block_is_checked_as_the_file_itself(tmp_path, block, message):
    shutil.copytree(REPO / "params", tmp_path / "params")
    path = tmp_path / "params" / "train.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "multi_label": block}))
    with pytest.raises(ParamsError, match=message.replace(".", r"\.")):
        Project(tmp_path).params("train")


_PURE = """
import sys
import params
from params import AugmentParams
AugmentParams(preset="custom", custom=[{"ToGray": {}}])
print(sorted(m for m in sys.modules if m.split(".")[0] == "tasks"))
"""


def test_importing_params_imports_no_tasks_module():
    out = subprocess.run(
        [sys.executable, "-c", _PURE], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_check_params_names_a_bad_custom_transform_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    shutil.copytree(REPO / "params", tmp_path / "params")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params" / "augment.yaml").write_text(
        "preset: custom\ncustom:\n  - HorizontalFlp: {p: 0.5}\n"
    )
    (tmp_path / "params" / "crossval.yaml").write_text("label_issues: -5\n")
    monkeypatch.chdir(tmp_path)
    bad = CliRunner().invoke(app, ["check-params"])
    assert bad.exit_code == 2
    lines = [line for line in bad.stderr.splitlines() if "augment.yaml" in line]
    assert len(lines) == 1, bad.stderr
    assert "params/augment.yaml: custom: item 0: HorizontalFlp: not an albumentations" in (
        bad.output.replace("\n", "")
    )
    assert "crossval.yaml: label_issues" in bad.output.replace("\n", "")
