"""The recipe benchmark's datasets: real labelled images that install offline, of different kinds.

Each builder writes an ImageFolder tree (label/file.png) once into the cache
(~/.cache/visiontune/recipe/<name>/) and returns it:

- demo: the demo set, Google's emoji by category (5 coarse classes, colour icons);
- apple-subcategory: Apple's emoji by subcategory (31 fine-grained, imbalanced classes);
- digits: sklearn's handwritten digits, 8×8 grey upscaled (10 classes, far from ImageNet);
- photo-tiles: non-overlapping tiles of scikit-image's sample photographs, labelled by the
  photograph (14 classes of real camera, microscope and telescope images, 8 of them grey).

The multi-label builders (MULTILABEL_DATASETS) write images/<file>.png and tags.csv (path,
labels: label names without spaces, space-joined), the manifest `visiontune collect manifest`
reads, into the same cache:

- emoji-keywords: Google's emoji (the demo's tarball) tagged with emojilib's keywords
  (75 labels, 1385 images, 2.40 labels per image);
- tabler-tags: Tabler's outline icons (line art) tagged with their tags and category
  (40 labels, 1166 images, 2.71 labels per image).
"""

from __future__ import annotations

import csv
import json
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.npm import cache_dir, npm_pack
from tasks.sources import DEMO_CLASSES, DEMO_PACKAGE, DEMO_VERSION, safe_label


def _emoji(artist: str, key: str, classes: tuple[str, ...] | None, least: int, most: int):
    def build(out: Path) -> None:
        package = f"emoji-datasource-{artist}"
        tarball = npm_pack(package, DEMO_VERSION, cache_dir() / "npm")
        with tarfile.open(tarball) as tar:
            emojis = json.load(tar.extractfile("package/emoji.json"))  # type: ignore[arg-type]
            by_label: dict[str, list[str]] = {}
            for e in sorted(emojis, key=lambda e: e["sort_order"]):
                if e.get(f"has_img_{artist}") and (classes is None or e[key] in classes):
                    by_label.setdefault(e[key], []).append(e["image"])
            for label, images in by_label.items():
                if len(images) < least:
                    continue
                folder = out / safe_label(label)
                folder.mkdir(parents=True)
                for name in images[:most]:
                    member = tar.extractfile(f"package/img/{artist}/64/{name}")
                    (folder / name).write_bytes(member.read())  # type: ignore[union-attr]

    return build


def _digits(out: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        grey = Image.fromarray((255 - pixels * 255 / 16).astype(np.uint8))  # dark ink, white paper
        folder = out / str(target)
        folder.mkdir(exist_ok=True)
        grey.resize((32, 32), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")


# scikit-image's bundled photographs (no download); synthetic and duplicate images left out
PHOTOS = (
    "astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "moon", "rocket",
)  # fmt: skip
TILE = 32  # px of the photograph (downscaled to ≤ 480 px first), no overlap
TILES_PER_PHOTO = 80


def _photo_tiles(out: Path) -> None:
    import skimage.data

    rng = np.random.default_rng(0)
    for name in PHOTOS:
        image = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
        image.thumbnail((480, 480))
        width, height = image.size
        spots = [
            (x, y)
            for x in range(0, width - TILE + 1, TILE)
            for y in range(0, height - TILE + 1, TILE)
        ]
        folder = out / name
        folder.mkdir()
        for k in rng.permutation(len(spots))[:TILES_PER_PHOTO]:
            x, y = spots[k]
            image.crop((x, y, x + TILE, y + TILE)).save(folder / f"{x:03d}-{y:03d}.png")


DATASETS: dict[str, Callable[[Path], None]] = {
    "demo": _emoji("google", "category", DEMO_CLASSES, 1, 120),
    "apple-subcategory": _emoji("apple", "subcategory", None, 20, 60),
    "digits": _digits,
    "photo-tiles": _photo_tiles,
}


# --- multi-label: images/<file>.png + tags.csv ---------------------------------------------

EMOJILIB = ("emojilib", "4.0.3")  # MIT; dist/emoji-en-US.json: emoji -> [slug, keywords...]
TABLER_VERSION = "3.48.0"  # @tabler/icons-png's last release (2026-12); icons.json the same
TAGS = "tags.csv"


def label_name(keyword: object) -> str:
    """A keyword as a label name: lower case, runs of white space (NBSP too) as one `_`."""
    return "_".join(str(keyword).lower().split())


def write_tags(out: Path, tags: dict[str, set[str]]) -> Path:
    """out/tags.csv: `path,labels` rows (images/<file>, sorted label names space-joined)."""
    csv_path = out / TAGS
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "labels"])
        for name in sorted(tags):
            writer.writerow([f"images/{name}", " ".join(sorted(tags[name]))])
    return csv_path


def label_counts(tags: dict[str, set[str]]) -> Counter[str]:
    return Counter(label for labels in tags.values() for label in labels)


def by_frequency(counts: Counter[str]) -> list[str]:
    """Label names, most frequent first (ties by name): a deterministic order."""
    return sorted(counts, key=lambda label: (-counts[label], label))


def emoji_keywords(tar: tarfile.TarFile, artist: str = "google") -> dict[str, set[str]]:
    """{image file: label names} of the artist's emoji (emoji.json's order) that emojilib knows.

    An emoji matches emojilib's character on the code points of `unified` with U+FE0F (the
    emoji presentation selector) left out on both sides; its labels are emojilib's keywords
    less the slug (the emoji's name), as label_name writes them.
    """
    with tarfile.open(npm_pack(*EMOJILIB, cache_dir() / "npm")) as lib_tar:
        lib = json.load(lib_tar.extractfile("package/dist/emoji-en-US.json"))  # type: ignore[arg-type]
    by_points = {
        tuple(c for c in map(ord, char) if c != 0xFE0F): words for char, words in lib.items()
    }
    emojis = json.load(tar.extractfile("package/emoji.json"))  # type: ignore[arg-type]
    tags: dict[str, set[str]] = {}
    for e in sorted(emojis, key=lambda e: e["sort_order"]):
        points = tuple(int(p, 16) for p in e["unified"].split("-") if int(p, 16) != 0xFE0F)
        if e.get(f"has_img_{artist}") and points in by_points:
            slug, *keywords = map(label_name, by_points[points])
            tags[e["image"]] = {k for k in keywords if k and k != slug}
    return tags


def merge_synonyms(tags: dict[str, set[str]], least: float = 0.9) -> dict[str, set[str]]:
    """Labels whose image sets have a Jaccard index >= `least` as one label.

    Labels are taken most frequent first; each joins the first more frequent label it is
    that close to that has not itself joined another (so no chains), and that one's name,
    the more frequent, names both. An image holds the merged label if it held either.
    """
    images: dict[str, set[str]] = {}
    together: dict[str, Counter[str]] = {}
    for item, labels in tags.items():
        for label in labels:
            images.setdefault(label, set()).add(item)
            together.setdefault(label, Counter()).update(labels - {label})
    order = by_frequency(Counter({label: len(items) for label, items in images.items()}))
    rank = {label: i for i, label in enumerate(order)}
    head: dict[str, str] = {}
    for label in order:
        head[label] = label
        for other in sorted(together[label], key=rank.__getitem__):
            if rank[other] > rank[label]:
                break
            both = together[label][other]
            union = len(images[label]) + len(images[other]) - both
            if head[other] == other and both / union >= least:
                head[label] = other
                break
    return {item: {head[label] for label in labels} for item, labels in tags.items()}


def keep_labels(tags: dict[str, set[str]], keep: Iterable[str]) -> dict[str, set[str]]:
    """Only the labels in `keep`; images left with no label go."""
    kept = set(keep)
    return {item: labels & kept for item, labels in tags.items() if labels & kept}


def extract_members(tar: tarfile.TarFile, members: dict[str, str], images: Path) -> None:
    """Write tar members {member name: file name} into images/, in one pass over the tar."""
    images.mkdir(parents=True, exist_ok=True)
    for member in tar:
        if member.name in members:
            (images / members[member.name]).write_bytes(tar.extractfile(member).read())  # type: ignore[union-attr]


EMOJI_LEAST = 20  # images per label
EMOJI_TOP_ONLY = 60  # images whose only label is the most frequent one (flag) kept


def _emoji_keywords(out: Path) -> None:
    tarball = npm_pack(DEMO_PACKAGE, DEMO_VERSION, cache_dir() / "npm")
    with tarfile.open(tarball) as tar:
        tags = merge_synonyms(emoji_keywords(tar))  # flag = banner = country = nation
        counts = label_counts(tags)
        tags = keep_labels(tags, (label for label, n in counts.items() if n >= EMOJI_LEAST))
        top = by_frequency(label_counts(tags))[0]
        alone = sorted(name for name, labels in tags.items() if labels == {top})
        rng = np.random.default_rng(0)
        for k in rng.permutation(len(alone))[EMOJI_TOP_ONLY:]:
            del tags[alone[k]]
        extract_members(
            tar, {f"package/img/google/64/{name}": name for name in tags}, out / "images"
        )
    write_tags(out, tags)


TABLER_SAMPLE = 1500  # outline icons
TABLER_LABELS = 40  # the most frequent labels in the sample
TABLER_SIDE = 96  # px, downscaled from 240


def tabler_labels(icon: dict) -> set[str]:
    """An icons.json entry's label names: its tags, and its category as `cat_<category>`."""
    labels = {label_name(tag) for tag in icon.get("tags", [])}
    if icon.get("category"):
        labels.add("cat_" + label_name(icon["category"]))
    return labels - {""}


def _tabler_tags(out: Path) -> None:
    npm = cache_dir() / "npm"
    with tarfile.open(npm_pack("@tabler/icons", TABLER_VERSION, npm)) as meta:
        icons = json.load(meta.extractfile("package/icons.json"))  # type: ignore[arg-type]
    prefix = "package/icons/outline/"
    with tarfile.open(npm_pack("@tabler/icons-png", TABLER_VERSION, npm)) as tar:
        names = sorted(
            m.name.removeprefix(prefix).removesuffix(".png")
            for m in tar.getmembers()
            if m.name.startswith(prefix) and m.name.endswith(".png")
        )
        names = [name for name in names if name in icons]
        rng = np.random.default_rng(0)
        sample = {
            names[k]: tabler_labels(icons[names[k]])
            for k in rng.permutation(len(names))[:TABLER_SAMPLE]
        }
        tags = keep_labels(sample, by_frequency(label_counts(sample))[:TABLER_LABELS])
        images = out / "images"
        images.mkdir(parents=True)
        for member in tar:
            name = member.name.removeprefix(prefix).removesuffix(".png")
            if member.name.startswith(prefix) and name in tags:
                icon = Image.open(tar.extractfile(member)).convert("RGBA")  # type: ignore[arg-type]
                flat = Image.alpha_composite(Image.new("RGBA", icon.size, "white"), icon)
                flat = flat.convert("RGB").resize(
                    (TABLER_SIDE, TABLER_SIDE), Image.Resampling.LANCZOS
                )
                flat.save(images / f"{name}.png")
    write_tags(out, {f"{name}.png": labels for name, labels in tags.items()})


MULTILABEL_DATASETS: dict[str, Callable[[Path], None]] = {
    "emoji-keywords": _emoji_keywords,
    "tabler-tags": _tabler_tags,
}


def dataset(name: str) -> Path:
    """Dataset `name`'s folder, built on first use: an ImageFolder tree (DATASETS), or
    images/ + tags.csv (MULTILABEL_DATASETS)."""
    out = cache_dir() / "recipe" / name
    if not out.is_dir():
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (DATASETS.get(name) or MULTILABEL_DATASETS[name])(tmp)
        tmp.rename(out)
    return out
