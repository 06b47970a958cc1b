"""Collecting sources into data/: folders, the demo, URL lists, manifests, hostile input."""

import contextlib
import hashlib
import json
import os
import random
import unicodedata

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from flows import cli
from flows.cli import app
from tasks.files import printable
from tasks.sources import (
    RESERVED_COLUMNS,
    SourceError,
    manifest_items,
    safe_label,
    url_list_items,
)
from tests.conftest import REPO
from tests.http_server import GOOD_JPEG, GOOD_PNG, TRICKLE_PNG, ImageServer
from tests.images import (
    Expect,
    fifo_watch,
    image_bytes,
    shape_image,
    write_hostile_tree,
    write_image_folder,
)
from tests.processes import kill_when, start
from tests.project import make_project, sh

# fast, small limits for the local server: 1 s per attempt, 1 retry after 0.05 s, 64 KiB cap;
# the server is on 127.0.0.1, which collect refuses without --allow-private (test_security.py)
LIMITS = (
    *("--timeout", "1", "--retries", "1", "--backoff", "0.05", "--max-mb", "0.0625"),
    "--allow-private",
)


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Rich wraps tables to the terminal width; a wide one keeps each row on one line."""
    monkeypatch.setenv("COLUMNS", "400")  # the console script's
    monkeypatch.setattr(cli.console, "_width", 400)  # this process's (fixed if COLUMNS was set)


def _invoke(project, *args):
    """`visiontune collect ARGS` in this process, as the console script runs it in PROJECT.

    The console script itself runs below (a killed download) and in test_pipeline; in-process
    runs go through the same CLI and flows without paying for a new interpreter each time.
    """
    with contextlib.chdir(project):
        return CliRunner().invoke(app, ["collect", *args])


def _collect_lines(project, *args) -> list[str]:
    result = _invoke(project, *args)
    assert result.exit_code == 0, f"{result.output[-4000:]}\n{result.exception!r}"
    return result.stdout.splitlines()


def _collect(project, *args):
    return "".join(_collect_lines(project, *args))


def _refusals(lines: list[str]) -> dict[str, str]:
    """{source: reason} from the printed 'refused' table."""
    rows = {}
    for line in lines:
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 3 and cells[1] and cells[0] != "source":
            rows[cells[0]] = cells[1]
    return rows


def _data_files(project) -> set[str]:
    data = project / "data"
    return {p.relative_to(data).as_posix() for p in data.rglob("*") if p.is_file()}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_folder_collect_is_idempotent_and_reports_changes(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=3, classes=("Red Things", "blue"))
    project = make_project(tmp_path / "project")
    out = _collect(project, "folder", str(source))
    assert "6 new, 0 changed, 0 unchanged" in out
    assert sorted(p.name for p in (project / "data").iterdir()) == [
        "blue",
        "labels.csv",
        "red_things",
        "sources.csv",
    ]
    first = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]

    assert "0 new, 0 changed, 6 unchanged" in _collect(project, "folder", str(source))
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] == first

    write_image_folder(source, per_class=1, seed=7, classes=("blue",))
    out = _collect(project, "folder", str(source))
    assert "1 new, 0 changed, 6 unchanged" in out
    assert "since the last version" in out and "1 added, 0 modified, 0 deleted" in out
    assert yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"] != first

    changed = source / "blue" / "blue_0_000.jpg"
    shape_image("circle", random.Random(1)).save(changed)
    out = _collect(project, "folder", str(source))
    assert "0 new, 1 changed, 6 unchanged" in out
    assert "0 added, 1 modified, 0 deleted image(s)" in out
    labels = pd.read_csv(project / "data" / "labels.csv")
    assert labels.values.tolist() == [["blue", "blue"], ["red_things", "Red Things"]]
    sources = pd.read_csv(project / "data" / "sources.csv")
    assert len(sources) == 7
    for row in sources.itertuples():
        assert _sha((project / "data" / row.path).read_bytes()) == row.sha256


def test_mirror_makes_data_follow_deletions_and_moves_in_the_source(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=3, classes=("circle", "square"))
    project = make_project(tmp_path / "project")
    assert "6 new" in _collect(project, "folder", str(source), "--mirror")
    # the user deletes a bad image, moves a mislabelled one and adds a class; one file is
    # being replaced (a FIFO for now) and is refused this time
    (source / "circle" / "circle_0_000.jpg").unlink()
    (source / "square" / "square_0_001.png").rename(source / "circle" / "square_0_001.png")
    write_image_folder(source, per_class=1, seed=3, classes=("triangle",))
    (source / "square" / "square_0_002.jpg").unlink()
    os.mkfifo(source / "square" / "square_0_002.jpg")

    plain = _collect(project, "folder", str(source))  # without --mirror nothing is removed
    assert "2 new, 0 changed, 3 unchanged, 1 refused;" in plain and "removed" not in plain
    assert {"circle/circle_0_000.jpg", "square/square_0_001.png"} <= _data_files(project)

    lines = _collect_lines(project, "folder", str(source), "--mirror")
    out = " ".join(lines)
    assert "0 new, 0 changed, 5 unchanged, 1 refused, 2 removed (--mirror)" in out
    assert "0 added, 0 modified, 2 deleted image(s)" in out
    assert _refusals(lines) == {str(source / "square" / "square_0_002.jpg"): "not_a_file"}
    images = {
        "circle/circle_0_001.png",
        "circle/circle_0_002.jpg",
        "circle/square_0_001.png",
        "square/square_0_000.jpg",
        "square/square_0_002.jpg",  # refused this time: its old copy stays
        "triangle/triangle_3_000.jpg",
    }
    assert _data_files(project) == images | {"labels.csv", "sources.csv"}
    assert set(_sources(project)["path"]) == images
    version = (project / "data.dvc").read_text()
    again = _collect(project, "folder", str(source), "--mirror")
    assert "0 new, 0 changed, 5 unchanged, 1 refused " in again and "removed" not in again
    assert (project / "data.dvc").read_text() == version

    # a class the source no longer has goes, with its folder and its labels.csv row
    for path in (source / "triangle").iterdir():
        path.unlink()
    (source / "triangle").rmdir()
    assert "1 removed (--mirror)" in _collect(project, "folder", str(source), "--mirror")
    assert not (project / "data" / "triangle").exists()
    labels = pd.read_csv(project / "data" / "labels.csv")
    assert labels["folder"].tolist() == ["circle", "square"]


def test_demo_collect_reproduces_the_committed_data_version(tmp_path, prefect_server):
    """The demo set installs from the npm registry with identical bytes: data.dvc matches."""
    project = make_project(tmp_path / "project")
    out = _collect(project, "demo")
    assert "600 new" in out
    labels = pd.read_csv(project / "data" / "labels.csv")
    assert "Food & Drink" in labels["label"].tolist()
    committed = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]
    collected = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]
    assert collected["md5"] == committed["md5"]
    assert collected["nfiles"] == committed["nfiles"] == 602  # 600 images + labels + sources


def test_a_tree_shipped_split_is_collected_by_label_and_keeps_its_test_split(
    tmp_path, prefect_server
):
    source = tmp_path / "source"
    write_image_folder(source / "train", per_class=8, classes=("cat", "dog"))
    write_image_folder(source / "Test", per_class=3, seed=1, classes=("cat", "dog"))
    (source / "train" / "notes.txt").write_text("a file beside the label folders")
    # the shapes are near-duplicates of each other, and a group follows its test image
    project = make_project(tmp_path / "project", {"clean": {"near_duplicates": "off"}})
    lines = _collect_lines(project, "folder", str(source))
    out = " ".join(lines)
    assert "22 new" in out and "the tree is split into test, train folders" in out
    assert _refusals(lines) == {f"{source}/train/notes.txt": "no_label"}
    assert {p.split("/")[0] for p in _data_files(project) if "/" in p} == {"cat", "dog"}
    sources = pd.read_csv(project / "data" / "sources.csv").set_index("path")
    assert sources.loc["cat/Test__cat_1_000.jpg", "folder_split"] == "test"
    assert sources.loc["dog/train__dog_0_007.png", "folder_split"] == "train"

    sh("dvc", "repro", "split", cwd=project)
    split = pd.read_parquet(project / "artifacts" / "split" / "split.parquet")
    assert (split.loc[split["folder_split"] == "test", "split"] == "test").all()
    assert set(split.loc[split["folder_split"] == "train", "split"]) <= {"train", "val"}

    # labels that happen to be called train and test, holding their images, stay labels
    plain = tmp_path / "plain"
    write_image_folder(plain, per_class=2, classes=("train", "test"))
    other = make_project(tmp_path / "other")
    assert "4 new" in _collect(other, "folder", str(plain))
    assert {p.split("/")[0] for p in _data_files(other) if "/" in p} == {"train", "test"}

    # an unpacked archive: one folder holding the label folders is named, and --mirror of
    # that folder leaves only its labels
    write_image_folder(tmp_path / "archive" / "pets", per_class=2, classes=("cat", "dog"))
    out = _collect(other, "folder", str(tmp_path / "archive"))
    assert f"everything is under one folder, {tmp_path / 'archive' / 'pets'}" in out
    assert "everything is under one folder" not in _collect(
        other, "folder", str(tmp_path / "archive" / "pets"), "--mirror"
    )
    assert {p.split("/")[0] for p in _data_files(other) if "/" in p} == {"cat", "dog"}


def test_folder_collect_errors_clearly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["collect", "folder", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_safe_label():
    assert safe_label("Food & Drink") == "food_drink"
    assert safe_label("  ../etc ") == "etc"
    assert safe_label("Café Crème") == "cafe_creme"
    cat, dog = safe_label("猫"), safe_label("犬")
    assert cat.startswith("label_") and cat != dog
    with pytest.raises(ValueError, match="empty label"):
        safe_label("   ")


def test_url_collect_survives_every_kind_of_bad_url(tmp_path, prefect_server):
    project = make_project(tmp_path / "project")
    with ImageServer(slow_seconds=3.0, flaky_failures=1) as server:
        urls = tmp_path / "urls.txt"
        good = {
            "/good.png": ("circle", GOOD_PNG),
            "/octet.jpg": ("Square Things", GOOD_JPEG),
            "/flaky.png": ("triangle", None),
        }
        bad = {
            "/slow.png": "timeout",
            "/big.png": "too_large",
            "/big-stream.png": "too_large",
            "/page.html": "wrong_type",
            "/fake.png": "not_an_image",
            "/missing.png": "http_error",
            "/error.png": "http_error",
        }
        lines = ["# one URL and a label per line"]
        lines += [f"{server.url(p)} {label}" for p, (label, _) in good.items()]
        lines += [f"{server.url(p)}" for p in bad]  # these take --label
        lines += ["file:///etc/passwd circle", "ftp://example.com/x.png circle", ""]
        urls.write_text("\n".join(lines) + "\n")

        out = _collect_lines(project, "urls", str(urls), "--label", "circle", *LIMITS)
        text = " ".join(out)
        assert "3 new, 0 changed, 0 unchanged, 9 refused" in text
        refused = _refusals(out)
        expected = {server.url(p): reason for p, reason in bad.items()}
        expected |= {"file:///etc/passwd": "bad_scheme", "ftp://example.com/x.png": "bad_scheme"}
        assert refused == expected
        # transient failures were retried once (Prefect task retries), permanent ones were not
        assert server.hits["/slow.png"] == 2
        assert server.hits["/error.png"] == 2
        assert server.hits["/flaky.png"] == 2
        assert server.hits["/missing.png"] == 1
        assert server.hits["/page.html"] == 1
        assert server.hits["/big.png"] == 1

        # exactly the good images are in data/ (no partial or temp file of a refused one)
        files = _data_files(project)
        images = {f for f in files if "/" in f}
        assert len(images) == 3
        assert {f.split("/")[0] for f in images} == {"circle", "square_things", "triangle"}
        sources = pd.read_csv(project / "data" / "sources.csv").set_index("source")
        assert sources.loc[server.url("/good.png"), "sha256"] == _sha(GOOD_PNG)
        assert sources.loc[server.url("/octet.jpg"), "label"] == "Square Things"
        for row in sources.itertuples():
            assert _sha((project / "data" / row.path).read_bytes()) == row.sha256

        # idempotent: what is there is not downloaded again
        before = dict(server.hits)
        urls.write_text("\n".join(f"{server.url(p)} {label}" for p, (label, _) in good.items()))
        text = " ".join(_collect_lines(project, "urls", str(urls), *LIMITS))
        assert "0 new, 0 changed, 3 unchanged, 0 refused" in text
        assert dict(server.hits) == before


def test_a_killed_download_leaves_nothing_in_data(tmp_path, prefect_server):
    project = make_project(tmp_path / "project")
    with ImageServer() as server:
        urls = tmp_path / "urls.txt"
        urls.write_text(f"{server.url('/trickle.png')} circle\n")

        def temp_files() -> list:
            data = project / "data"
            return list(data.rglob(".*.tmp")) if data.exists() else []

        proc = start(
            *("visiontune", "collect", "urls", str(urls), "--timeout", "120", "--allow-private"),
            cwd=project,
        )
        kill_when(proc, temp_files, "the download started", timeout=120)  # mid-download
        temp = temp_files()
        assert temp[0].stat().st_size < len(TRICKLE_PNG)
        server.release_trickle.set()
        assert {
            f for f in _data_files(project) if not f.rsplit("/", 1)[-1].startswith(".")
        } == set()
        assert not (project / "data.dvc").exists()

        server.trickle_fast = True
        text = _collect(project, "urls", str(urls), "--allow-private")
        assert "1 new, 0 changed, 0 unchanged, 0 refused" in text
        files = _data_files(project)
        assert not [f for f in files if f.endswith(".tmp")]  # the leftover was removed
        image = next(f for f in files if f.startswith("circle/"))
        assert (project / "data" / image).read_bytes() == TRICKLE_PNG


def _write_manifest_tree(tmp_path):
    """A manifest folder with good rows and every kind of unsafe or unusable row."""
    root = tmp_path / "shared"
    (root / "imgs").mkdir(parents=True)
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes(shape_image("circle", random.Random(1))))
    for i, kind in enumerate(("circle", "square", "triangle", "circle")):
        (root / "imgs" / f"{i}.png").write_bytes(image_bytes(shape_image(kind, random.Random(i))))
    (root / "imgs" / "escape.png").symlink_to(outside)  # inside the root, pointing outside
    (root / "imgs" / "alias.png").symlink_to(root / "imgs" / "0.png")  # stays inside: fine
    rows = [
        ("imgs/0.png", "", "Café Crème", "s1"),
        ("imgs/1.png", "", "猫", "s1"),
        (str(root / "imgs" / "2.png"), "", "triangle", "s2"),  # absolute, inside the root
        ("imgs/alias.png", "", "Café Crème", "s3"),
        ("../outside.png", "", "circle", ""),
        (str(outside), "", "circle", ""),
        ("imgs/../../outside.png", "", "circle", ""),
        ("imgs/escape.png", "", "circle", ""),
        ("imgs/nope.png", "", "circle", ""),
        ("imgs/3.png", "", "", ""),
        ("", "file:///etc/passwd", "circle", ""),
    ]
    frame = pd.DataFrame(rows, columns=["path", "url", "label", "group"])
    return root, frame, outside


def test_manifest_collect_refuses_escapes_and_keeps_labels_and_columns(tmp_path, prefect_server):
    root, frame, outside = _write_manifest_tree(tmp_path)
    with ImageServer() as server:
        frame.loc[len(frame)] = ["", server.url("/good.png"), "circle", "s4"]
        manifest = root / "manifest.csv"
        frame.to_csv(manifest, index=False)
        project = make_project(tmp_path / "project")
        out = _collect_lines(project, "manifest", str(manifest), *LIMITS)
    text = " ".join(out)
    assert "5 new, 0 changed, 0 unchanged, 7 refused" in text
    assert _refusals(out) == {
        "../outside.png": "path_escape",
        str(outside): "path_escape",
        "imgs/../../outside.png": "path_escape",
        "imgs/escape.png": "symlink_escape",
        "imgs/nope.png": "missing",
        "imgs/3.png": "no_label",
        "file:///etc/passwd": "bad_scheme",
    }
    cat = safe_label("猫")
    labels = pd.read_csv(project / "data" / "labels.csv")
    assert labels.values.tolist() == sorted(
        [["cafe_creme", "Café Crème"], [cat, "猫"], ["circle", "circle"], ["triangle", "triangle"]]
    )
    sources = pd.read_csv(project / "data" / "sources.csv", keep_default_na=False)
    assert list(sources.columns) == ["path", "label", "source", "sha256", "group"]
    assert sorted(sources["group"]) == ["s1", "s1", "s2", "s3", "s4"]
    assert outside.read_bytes() not in {
        (project / "data" / p).read_bytes() for p in sources["path"]
    }
    assert len(_data_files(project)) == 5 + 2


def test_manifest_readers(tmp_path):
    root, frame, _ = _write_manifest_tree(tmp_path)
    frame.to_parquet(root / "manifest.parquet")
    items, refused = manifest_items(root / "manifest.parquet")
    assert len(items) == 4 and len(refused) == 7
    assert dict(items[0].extra) == {"group": "s1"}
    for bad_columns in (["file", "label"], ["path", "category"]):
        pd.DataFrame(columns=bad_columns).to_csv(root / "bad.csv", index=False)
        with pytest.raises(SourceError, match="needs a 'label' column and a 'path' or 'url'"):
            manifest_items(root / "bad.csv")
    pd.DataFrame(columns=["path", "label", "fold"]).to_csv(root / "bad.csv", index=False)
    assert "fold" in RESERVED_COLUMNS
    with pytest.raises(SourceError, match=r"\['fold'\] are reserved"):
        manifest_items(root / "bad.csv")
    # the dataset's own split column is read as a tree's split folders are
    split = frame.assign(split=["Train", "valid", "TEST", "holdout"] + [""] * (len(frame) - 4))
    split.to_csv(root / "split.csv", index=False)
    items, _ = manifest_items(root / "split.csv")
    assert [dict(i.extra)["folder_split"] for i in items] == ["train", "val", "test", ""]
    (root / "urls.txt").write_text("https://a.example/x.png\thello world\nhttp://b.example/y\n")
    items, refused = url_list_items(root / "urls.txt")
    assert [(i.label, i.url) for i in items] == [("hello world", "https://a.example/x.png")]
    assert [(r.source, r.reason) for r in refused] == [("http://b.example/y", "no_label")]


def test_manifest_collect_errors_clearly(tmp_path, prefect_server):
    project = make_project(tmp_path / "project")
    (tmp_path / "m.csv").write_text("file,label\na.png,cat\n")
    result = _invoke(project, "manifest", str(tmp_path / "m.csv"))
    assert result.exit_code == 2
    assert "needs a 'label' column and a 'path' or 'url' column" in result.stderr.replace("\n", "")
    assert not (project / "data").exists()


def test_entries_landing_on_one_file_are_refused_not_overwritten(tmp_path):
    from tasks.collect import unique_destinations
    from tasks.sources import SourceItem

    first = SourceItem("Cat", "a__b.png", "/src/a/b.png", data=b"1")
    repeat = SourceItem("Cat", "a__b.png", "/src/a/b.png", data=b"1")
    clash = SourceItem("cat", "a__b.png", "/src/cat/a__b.png", data=b"2")  # same folder: cat
    other = SourceItem("dog", "a__b.png", "/src/dog/a__b.png", data=b"3")
    kept, refused = unique_destinations([first, repeat, clash, other])
    assert kept == [first, other]
    assert [(r.source, r.reason) for r in refused] == [("/src/cat/a__b.png", "name_clash")]


def _sources(project) -> pd.DataFrame:
    return pd.read_csv(project / "data" / "sources.csv", dtype=str, keep_default_na=False)


def _check_collected(project, expect: dict, refusals: dict[str, str]) -> pd.DataFrame:
    """Refused entries have their reasons, the rest is in data/ (exactly it, byte for byte)."""
    assert refusals == {src: e.refused for src, e in expect.items() if e.refused}
    sources = _sources(project)
    assert sorted(sources["source"]) == sorted(src for src, e in expect.items() if not e.refused)
    assert _data_files(project) == set(sources["path"]) | {"labels.csv", "sources.csv"}
    for row in sources.itertuples():
        assert _sha((project / "data" / row.path).read_bytes()) == row.sha256
        assert len(row.path.rsplit("/", 1)[-1].encode()) <= 200
    return sources


def _clean_outcomes(project, sources: pd.DataFrame) -> dict[str, str]:
    """`visiontune stage clean` in PROJECT; {source: rejection reason or ""}."""
    with contextlib.chdir(project):
        result = CliRunner().invoke(app, ["stage", "clean"])
    assert result.exit_code == 0, f"{result.output[-4000:]}\n{result.exception!r}"
    rejected = pd.read_csv(project / "artifacts" / "clean" / "rejected.csv", dtype=str)
    reason_of = dict(zip(rejected["path"], rejected["reason"], strict=True))
    kept = set(pd.read_parquet(project / "artifacts" / "clean" / "manifest.parquet")["path"])
    assert kept | set(reason_of) == set(sources["path"])  # every collected file has an outcome
    return {row.source: reason_of.get(row.path, "") for row in sources.itertuples()}


def test_folder_collect_and_clean_survive_the_hostile_corpus(tmp_path, prefect_server):
    """Special files, bad names, huge and empty files, half-supported formats: each one ends
    collected or refused with a reason, no FIFO is opened, and clean takes what was collected."""
    source = tmp_path / "source"
    expect = {printable(str(p)): e for p, e in write_hostile_tree(source).items()}
    project = make_project(tmp_path / "project")
    with fifo_watch(source) as opened:
        lines = _collect_lines(project, "folder", str(source))
    assert opened == []
    sources = _check_collected(project, expect, _refusals(lines))
    # the original names, escaped, are in sources.csv; data/ has safe ones
    bad = printable(os.fsdecode(bytes(source) + b"/circle/caf\xe9.png"))
    assert sources.set_index("source").loc[bad, "path"] == "circle/caf_xe9.png"
    assert "squ_xe4re" in set(pd.read_csv(project / "data" / "labels.csv")["folder"])
    assert _clean_outcomes(project, sources) == {
        src: e.rejected for src, e in expect.items() if not e.refused
    }


def test_manifest_collect_and_clean_survive_the_hostile_corpus(tmp_path, prefect_server):
    """The same corpus named by a manifest whose cells are not all UTF-8 (a Latin-1 export)."""
    source = tmp_path / "source"
    rows, wanted = [], {}
    for path, outcome in write_hostile_tree(source).items():
        rel = path.relative_to(source).as_posix()
        label = rel.split("/")[0] if "/" in rel else "circle"
        rows.append({"path": rel, "label": label, "group": "gr\udcfcppe"})  # ü in Latin-1
        if rel == "loose.png":  # a manifest row names its label
            outcome = Expect()
        elif rel == "circle/up":  # the row names a folder
            outcome = Expect("not_a_file")
        wanted[printable(rel)] = outcome
    manifest = source / "manifest.csv"
    pd.DataFrame(rows, dtype=object).to_csv(manifest, index=False, errors="surrogateescape")
    project = make_project(tmp_path / "project")
    with fifo_watch(source) as opened:
        lines = _collect_lines(project, "manifest", str(manifest))
    assert opened == []
    sources = _check_collected(project, wanted, _refusals(lines))
    assert set(sources["group"]) == {"gr\\xfcppe"}
    assert _clean_outcomes(project, sources) == {
        src: e.rejected for src, e in wanted.items() if not e.refused
    }


def test_local_sources_get_the_size_limit_before_reading(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=2, classes=("circle",))
    big = source / "circle" / "big.png"
    big.write_bytes(random.Random(0).randbytes(3 * 2**19))  # 1.5 MiB of real bytes
    project = make_project(tmp_path / "project")
    lines = _collect_lines(project, "folder", str(source), "--max-mb", "1")
    assert "2 new, 0 changed, 0 unchanged, 1 refused" in " ".join(lines)
    assert _refusals(lines) == {str(big): "too_large"}
    assert {p for p in _data_files(project) if p.startswith("circle/")} == {
        "circle/circle_0_000.jpg",
        "circle/circle_0_001.png",
    }
    manifest = source / "manifest.csv"
    manifest.write_text("path,label\ncircle/big.png,circle\ncircle/circle_0_000.jpg,round\n")
    lines = _collect_lines(project, "manifest", str(manifest), "--max-mb", "1")
    assert "1 new, 0 changed, 0 unchanged, 1 refused" in " ".join(lines)
    assert _refusals(lines) == {"circle/big.png": "too_large"}
    assert not [p for p in _data_files(project) if p.endswith("big.png")]
    # the default is 50 MiB: the same file is collected without the option
    assert "1 new" in _collect(project, "folder", str(source))


def test_a_tree_that_changes_while_it_is_collected(tmp_path):
    """Files listed, then removed, swapped for a FIFO or a link out, grown or rewritten
    before they are copied: each is refused with a reason or collected as it is now."""
    from tasks.collect import write_items
    from tasks.sources import folder_items

    source, data = tmp_path / "source", tmp_path / "data"
    write_image_folder(source, per_class=6, classes=("circle",))
    outside = tmp_path / "outside.png"
    outside.write_bytes(image_bytes(shape_image("circle", random.Random(9))))
    items, refused = folder_items(source, max_bytes=2**20)
    assert refused == [] and len(items) == 6
    files = sorted((source / "circle").iterdir())
    files[0].unlink()
    files[1].unlink()
    os.mkfifo(files[1])
    files[2].write_bytes(bytes(2**20 + 1))
    files[3].unlink()
    files[3].symlink_to(outside)
    rewritten = image_bytes(shape_image("square", random.Random(4)))
    files[4].write_bytes(rewritten)
    with fifo_watch(source) as opened:
        report = write_items.fn(items, data, 2**20)
    assert opened == []
    assert [(r.source, r.reason) for r in report.refused] == [
        (str(files[0]), "missing"),
        (str(files[1]), "not_a_file"),
        (str(files[2]), "too_large"),
        (str(files[3]), "unreadable"),  # a link now: not followed out of the tree
    ]
    assert report.new == [f"circle/{files[4].name}", f"circle/{files[5].name}"]
    assert {r["path"]: r["sha256"] for r in report.records} == {
        f"circle/{f.name}": _sha((data / "circle" / f.name).read_bytes()) for f in files[4:]
    }
    assert (data / "circle" / files[4].name).read_bytes() == rewritten
    assert sorted(p.name for p in (data / "circle").iterdir()) == [f.name for f in files[4:]]


def test_safe_names_are_printable_normalised_and_bounded():
    from tasks.sources import safe_name

    assert safe_name(os.fsdecode(b"caf\xe9.png")) == "caf_xe9.png"
    assert safe_name(unicodedata.normalize("NFD", "café.png")) == "café.png"  # NFC
    assert safe_name("new\nline.png") == "new_line.png"
    assert safe_name("-rf.png") == "-rf.png"
    for long in ("a" * 251 + ".png", "猫" * 83 + ".png", "é" * 200):
        name = safe_name(long)
        assert len(name.encode()) <= 200 and len(name) <= 120
        assert name.endswith(".png") or "." not in long
        assert name != safe_name(long[1:])  # the hash of the whole name keeps them apart


def test_a_url_list_that_is_not_utf8(tmp_path):
    urls = tmp_path / "urls.txt"
    urls.write_bytes(b"https://a.example/caf\xe9.png chat\xe9\nhttps://b.example/ok.png dog\n")
    items, refused = url_list_items(urls)
    assert refused == []
    assert [(i.label, i.url) for i in items] == [
        ("chat\\xe9", "https://a.example/caf%E9.png"),
        ("dog", "https://b.example/ok.png"),
    ]


# --- multi-label manifests ------------------------------------------------------------------


def _photos(root, count: int) -> list[str]:
    """`count` distinct real PNGs under root/photos/; their manifest paths."""
    (root / "photos").mkdir(parents=True, exist_ok=True)
    kinds = ("circle", "square", "triangle")
    for i in range(count):
        img = shape_image(kinds[i % 3], random.Random(100 + i))
        (root / "photos" / f"{i:03d}.png").write_bytes(image_bytes(img))
    return [f"photos/{i:03d}.png" for i in range(count)]


def _write_tags(path, rows: list[tuple[str, str]], header: str = "path,labels") -> None:
    pd.DataFrame(rows, columns=header.split(","), dtype=object).to_csv(path, index=False)


def _cells(lines: list[str]) -> list[list[str]]:
    """The cells of every row of the printed tables."""
    rows = []
    for line in lines:
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells:
            rows.append(cells)
    return rows


def _md5(project) -> str:
    return yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]


def test_manifest_labels_with_each_separator_and_one_hot_columns(tmp_path):
    paths = _photos(tmp_path, 3)
    for sep in (" ", "|", ";", ","):
        names = ["beach", "dog"] if sep == " " else ["beach", "Sun Set"]
        _write_tags(
            tmp_path / "tags.csv",
            [(paths[0], sep.join(names)), (paths[1], f"{sep}dog{sep}{sep}"), (paths[2], "")],
        )
        items, refused = manifest_items(tmp_path / "tags.csv", label_sep=sep)
        assert [(i.name, i.labels, i.folder) for i in items] == [
            ("photos__000.png", tuple(sorted(names, key=safe_label)), "_images"),
            ("photos__001.png", ("dog",), "_images"),
        ], sep
        assert [(r.source, r.reason) for r in refused] == [(paths[2], "no_label")]
        items, refused = manifest_items(tmp_path / "tags.csv", label_sep=sep, allow_empty=True)
        assert [i.labels for i in items][2:] == [()] and refused == []

    one_hot = [
        (paths[0], "1", "YES", "false"),
        (paths[1], "0", "no", "True"),
        (paths[2], "0", "maybe", "1"),
    ]
    _write_tags(tmp_path / "hot.csv", one_hot, "path,beach,Big Dog,sunset")
    items, refused = manifest_items(
        tmp_path / "hot.csv", label_columns=["beach", "Big Dog", "sunset"]
    )
    assert [i.labels for i in items] == [("beach", "Big Dog"), ("sunset",)]
    assert [(r.source, r.reason) for r in refused] == [(paths[2], "bad_label_value")]
    assert "'maybe' in column 'Big Dog'" in refused[0].detail
    _write_tags(tmp_path / "hot.csv", [(paths[0], "0", "0", "0")], "path,beach,Big Dog,sunset")
    _, refused = manifest_items(tmp_path / "hot.csv", label_columns=["beach", "Big Dog", "sunset"])
    assert [r.reason for r in refused] == ["no_label"]

    _write_tags(tmp_path / "both.csv", [(paths[0], "dog", "dog")], "path,label,labels")
    with pytest.raises(SourceError, match=r"both a 'label' column .* and a 'labels' column"):
        manifest_items(tmp_path / "both.csv")
    with pytest.raises(SourceError, match=r"--label-columns nope: no column\(s\) \['nope'\]"):
        manifest_items(tmp_path / "hot.csv", label_columns=["nope"])
    with pytest.raises(SourceError, match="label separator '/'"):
        manifest_items(tmp_path / "tags.csv", label_sep="/")
    assert {"labels", "original_labels"} <= RESERVED_COLUMNS

    # one image on two rows: the same set is one item, another set is refused, not merged
    from tasks.collect import unique_destinations

    _write_tags(tmp_path / "twice.csv", [(paths[0], "dog"), (paths[0], "dog"), (paths[0], "cat")])
    items, refused = unique_destinations(manifest_items(tmp_path / "twice.csv")[0])
    assert [i.labels for i in items] == [("dog",)]
    assert [(r.source, r.reason) for r in refused] == [(paths[0], "label_conflict")]


def test_multi_label_collect_layout_relabel_mirror_and_clean(tmp_path, prefect_server):
    """A `labels` manifest lands in data/_images/ with its sets in sources.csv; a relabel is a
    new data version whose diff counts +1/-1 per label; --mirror removes an image; clean
    gives a manifest with a `labels` column."""
    root = tmp_path / "shared"
    paths = _photos(root, 5)
    rows = [
        (paths[0], "beach dog sunset"),
        (paths[1], "Café 猫"),
        (paths[2], ""),  # no label: refused unless --allow-empty
        (paths[3], "dog Dog dog"),  # one label
        (paths[4], "beach"),
    ]
    tags = root / "tags.csv"
    _write_tags(tags, rows)
    project = make_project(tmp_path / "project", {"clean": {"near_duplicates": "off"}})
    lines = _collect_lines(project, "manifest", str(tags))
    assert "4 new, 0 changed, 0 unchanged, 1 refused" in " ".join(lines)
    cells = _cells(lines)
    assert [c for c in cells if len(c) == 3 and c[1] == "no_label"] == [
        [paths[2], "no_label", "the labels cell is empty (--allow-empty keeps such images)"]
    ]
    assert ["dog", "2", "0"] in cells and ["sunset", "1", "0"] in cells  # all gained
    images = {f"_images/photos__{i:03d}.png" for i in (0, 1, 3, 4)}
    assert _data_files(project) == images | {"labels.csv", "sources.csv", "task.json"}
    task = (project / "data" / "task.json").read_text()
    assert json.loads(task) == {"task": "multi_label", "allow_empty": False}
    sources = _sources(project)
    assert list(sources.columns) == ["path", "labels", "original_labels", "source", "sha256"]
    cat = safe_label("猫")
    by_path = sources.set_index("path")
    assert by_path.loc["_images/photos__000.png", "labels"] == "beach dog sunset"
    assert by_path.loc["_images/photos__001.png", "labels"] == f"cafe {cat}"
    assert json.loads(by_path.loc["_images/photos__001.png", "original_labels"]) == ["Café", "猫"]
    assert json.loads(by_path.loc["_images/photos__003.png", "original_labels"]) == ["dog"]
    for row in sources.itertuples():
        assert _sha((project / "data" / row.path).read_bytes()) == row.sha256
    labels = pd.read_csv(project / "data" / "labels.csv")
    assert labels.values.tolist() == sorted(
        [["beach", "beach"], ["cafe", "Café"], [cat, "猫"], ["dog", "dog"], ["sunset", "sunset"]]
    )

    # a relabel: the same images, new sets; data.dvc moves and the diff is per label
    first = _md5(project)
    rows[0] = (paths[0], "beach dog")
    rows[1] = (paths[1], "Café 猫 sunset")
    _write_tags(tags, rows)
    lines = _collect_lines(project, "manifest", str(tags))
    out = " ".join(lines)
    assert "0 new, 0 changed, 4 unchanged, 1 refused" in out
    assert "0 added, 0 modified, 0 deleted image(s), 2 relabelled" in out
    assert _md5(project) != first
    assert ["sunset", "1", "1"] in _cells(lines)  # gained by 001, lost by 000
    assert not [c for c in _cells(lines) if c[0] in ("beach", "dog", "cafe")]
    assert _sources(project).set_index("path").loc["_images/photos__000.png", "labels"] == (
        "beach dog"
    )

    # --allow-empty keeps the image with no label; task.json says so
    lines = _collect_lines(project, "manifest", str(tags), "--allow-empty")
    assert "1 new, 0 changed, 4 unchanged, 0 refused" in " ".join(lines)
    assert _sources(project).set_index("path").loc["_images/photos__002.png", "labels"] == ""
    assert json.loads((project / "data" / "task.json").read_text())["allow_empty"] is True

    # --mirror: an image the manifest no longer lists goes, and its labels lose it
    del rows[4]
    _write_tags(tags, rows)
    lines = _collect_lines(project, "manifest", str(tags), "--allow-empty", "--mirror")
    out = " ".join(lines)
    assert "0 new, 0 changed, 4 unchanged, 0 refused, 1 removed (--mirror)" in out
    assert "0 added, 0 modified, 1 deleted image(s), 0 relabelled" in out
    assert ["beach", "0", "1"] in _cells(lines)
    assert "_images/photos__004.png" not in _data_files(project)
    assert "_images/photos__004.png" not in set(_sources(project)["path"])

    with contextlib.chdir(project):
        result = CliRunner().invoke(app, ["stage", "clean"])
    assert result.exit_code == 0, f"{result.output[-4000:]}\n{result.exception!r}"
    manifest = pd.read_parquet(project / "artifacts" / "clean" / "manifest.parquet")
    assert "label" not in manifest.columns and "original_label" not in manifest.columns
    kept = dict(zip(manifest["path"], manifest["labels"], strict=True))
    assert kept == {
        "_images/photos__000.png": "beach dog",
        "_images/photos__001.png": f"cafe {cat} sunset",
        "_images/photos__002.png": "",
        "_images/photos__003.png": "dog",
    }
    originals = manifest.set_index("path")["original_labels"].map(json.loads)
    assert originals["_images/photos__001.png"] == ["Café", "猫", "sunset"]


def test_one_data_folder_holds_one_kind_of_labels_unless_mirror(tmp_path, prefect_server):
    source = tmp_path / "source"
    write_image_folder(source, per_class=2, classes=("circle", "square"))
    root = tmp_path / "shared"
    paths = _photos(root, 3)
    hot = root / "hot.csv"
    rows = [(paths[0], "1", "0"), (paths[1], "TRUE", "yes"), (paths[2], "0", "1")]
    _write_tags(hot, rows, "path,Red Thing,blue")
    project = make_project(tmp_path / "project")
    assert "4 new" in _collect(project, "folder", str(source))
    version = _md5(project)
    files = _data_files(project)

    multi = ("manifest", str(hot), "--label-columns", "Red Thing, blue")
    result = _invoke(project, *multi)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "data/ holds single-label" in message and "multi-label" in message
    assert "--mirror" in message
    assert _data_files(project) == files and _md5(project) == version

    lines = _collect_lines(project, *multi, "--mirror")
    assert "3 new, 0 changed, 0 unchanged, 0 refused, 4 removed (--mirror)" in " ".join(lines)
    images = {f"_images/photos__{i:03d}.png" for i in range(3)}
    assert _data_files(project) == images | {"labels.csv", "sources.csv", "task.json"}
    assert _sources(project)["labels"].tolist() == ["red_thing", "blue red_thing", "blue"]
    labels = pd.read_csv(project / "data" / "labels.csv")
    assert labels.values.tolist() == [["blue", "blue"], ["red_thing", "Red Thing"]]

    # and back: a single-label source into multi-label data/
    result = _invoke(project, "folder", str(source))
    assert result.exit_code == 2 and "data/ holds multi-label" in result.stderr
    assert "4 new" in _collect(project, "folder", str(source), "--mirror")
    assert {p.split("/")[0] for p in _data_files(project) if "/" in p} == {"circle", "square"}
    assert not (project / "data" / "task.json").exists()
    assert list(_sources(project).columns) == ["path", "label", "source", "sha256"]
    assert pd.read_csv(project / "data" / "labels.csv")["folder"].tolist() == ["circle", "square"]
