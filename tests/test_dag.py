"""Staleness: DVC's own answer per stage, with data/ hashed once per check instead of twice."""

from __future__ import annotations

import contextlib
from pathlib import Path

from flows.project.dag import stale_stages
from tests.project import sh

DVC_YAML = """\
stages:
  count:
    cmd: ls data/a > count.txt
    deps:
      - data
    outs:
      - count.txt
  copy:
    cmd: cp count.txt copy.txt
    deps:
      - count.txt
    outs:
      - copy.txt
"""


def _repo(root: Path) -> Path:
    (root / "data" / "a").mkdir(parents=True)
    for i in range(3):
        (root / "data" / "a" / f"{i}.txt").write_text(str(i))
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    sh("dvc", "add", "-q", "data", cwd=root)
    (root / "dvc.yaml").write_text(DVC_YAML)
    return root


def _dvc_says(root: Path) -> list[str]:
    from dvc.repo import Repo, lock_repo

    from flows.project.dag import in_order

    with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
        return [stage.addressing for stage in in_order(repo) if stage.changed()]


def test_staleness_agrees_with_dvc_and_hashes_data_once(tmp_path, monkeypatch):
    root = _repo(tmp_path)
    assert stale_stages(root) == _dvc_says(root) == ["count", "copy"]  # never ran
    sh("dvc", "repro", "-q", cwd=root)
    assert stale_stages(root) == _dvc_says(root) == []

    (root / "data" / "a" / "3.txt").write_text("3")  # changed, not yet `dvc add`ed
    assert stale_stages(root) == _dvc_says(root) == ["data.dvc", "count"]
    sh("dvc", "add", "-q", "data", cwd=root)  # what collect does: data.dvc is up to date…
    assert stale_stages(root) == _dvc_says(root) == ["count"]  # …its dependent is not
    sh("dvc", "repro", "-q", cwd=root)
    assert stale_stages(root) == _dvc_says(root) == []

    # the up-to-date answer came from data.dvc's recorded hash: data/ walked once
    from dvc.output import Output

    walked: list[str] = []
    original = Output.get_hash

    def counting(self):
        walked.append(self.def_path)
        return original(self)

    monkeypatch.setattr(Output, "get_hash", counting)
    assert stale_stages(root) == []
    assert walked.count("data") == 1
    walked.clear()
    assert _dvc_says(root) == []
    assert walked.count("data") == 2  # DVC alone: as data.dvc's output and as a dependency


def test_a_commit_from_the_staleness_pass_is_what_dvc_commits(tmp_path):
    """The commit that takes data/'s hash from the check of data.dvc writes the same
    dvc.lock as `dvc commit` (which walks data/ twice more), and DVC then sees no change."""
    import subprocess

    import yaml
    from dvc.repo import Repo, lock_repo

    from flows.project.dag import Staleness, in_order

    root = _repo(tmp_path)
    sh("dvc", "repro", "-q", cwd=root)
    (root / "data" / "a" / "3.txt").write_text("3")
    sh("dvc", "add", "-q", "data", cwd=root)
    subprocess.run("ls data/a > count.txt", shell=True, cwd=root, check=True)  # the stage ran
    with contextlib.chdir(root), Repo(str(root)) as repo, lock_repo(repo):
        staleness = Staleness()
        stale = [stage.addressing for stage in in_order(repo) if staleness.changed(stage)]
        assert stale == ["count", "copy"]  # copy: its input count.txt is new
        staleness.commit(repo, "count")
    ours = yaml.safe_load((root / "dvc.lock").read_text())
    sh("dvc", "commit", "-f", "-q", "count", cwd=root)
    assert yaml.safe_load((root / "dvc.lock").read_text()) == ours
    assert _dvc_says(root) == ["copy"]  # its dep count.txt changed; count itself is clean
