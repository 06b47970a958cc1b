"""Small real images for tests: coloured shapes, one shape per class, plus the project's
bad-input corpus: broken images, hostile formats and modes, special files and names."""

from __future__ import annotations

import contextlib
import io
import os
import random
import shutil
import socket
import stat
import struct
import threading
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import tasks.decode  # noqa: F401  (its HEIF plugin writes the phone photos below)
from tasks.files import printable

CLASSES = ("circle", "square", "triangle")


def shape_image(kind: str, rng: random.Random, size: int = 48) -> Image.Image:
    bg = tuple(rng.randint(200, 255) for _ in range(3))
    fg = tuple(rng.randint(0, 120) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(img)
    r = rng.randint(size // 4, size // 2 - 2)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fg)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fg)
    return img


def write_image_folder(
    root: Path, per_class: int = 16, seed: int = 0, classes: tuple[str, ...] = CLASSES
) -> list[Path]:
    """An ImageFolder tree root/<class>/<n>.png|jpg of distinguishable shapes."""
    rng = random.Random(seed)
    paths = []
    for kind in classes:
        (root / kind).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = shape_image(kind, rng)
            ext = "png" if i % 2 else "jpg"
            path = root / kind / f"{kind}_{seed}_{i:03d}.{ext}"
            img.save(path)
            paths.append(path)
    return paths


def write_collect_source(root: Path, per_class: int) -> Path:
    """A source to collect: write_image_folder's tree plus circle/broken.png, which clean
    rejects (corrupt)."""
    write_image_folder(root, per_class=per_class)
    truncated_png(root / "circle" / "broken.png")
    return root


def truncated_png(path: Path) -> Path:
    """A PNG cut in half: opens (header is fine) but fails to fully decode."""
    img = shape_image("circle", random.Random(99), size=64)
    img.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def image_bytes(img: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def rotated_jpeg_bytes() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90°': upright it is 20x40."""
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    return image_bytes(img, "JPEG", exif=exif)


def write_bad_corpus(data: Path) -> dict[str, str]:
    """One file per clean rejection reason under data/<label>/; {data-relative path: reason}.

    Meant for CleanParams(max_pixels=200_000, classes=CLASSES, near_duplicates="keep_one");
    the thresholds in comments are those params and the defaults.
    """
    rng = random.Random(5)
    files: dict[str, tuple[bytes, str]] = {
        "circle/empty.png": (b"", "empty"),
        "circle/notes.txt": (b"just some text, not pixels\n", "not_an_image"),
        "circle/tiny.png": (image_bytes(Image.new("RGB", (4, 4))), "too_small"),
        "circle/banner.png": (image_bytes(Image.new("RGB", (220, 10), "red")), "aspect_ratio"),
        # 500x500 = 250k pixels > max_pixels 200k: refused from the header, never decoded
        "square/bomb.png": (image_bytes(Image.new("1", (500, 500))), "decompression_bomb"),
        # 32-bit float pixels have no defined RGB rendering
        "square/float.tif": (
            image_bytes(Image.new("F", (30, 30), 0.5), "TIFF"),
            "unsupported_mode",
        ),
        "other/stray.png": (image_bytes(shape_image("circle", rng)), "label_not_allowed"),
    }
    full = image_bytes(shape_image("circle", rng, size=64))
    files["circle/truncated.png"] = (full[: len(full) // 2], "corrupt")
    original = shape_image("square", rng, size=64)
    files["square/a_original.png"] = (image_bytes(original), "")
    files["square/b_copy.png"] = (image_bytes(original), "duplicate")
    # re-encoded as a high-quality JPEG: other bytes, same look
    files["square/c_reencoded.jpg"] = (image_bytes(original, "JPEG", quality=95), "near_duplicate")
    conflict = image_bytes(shape_image("triangle", rng))
    files["triangle/conflict.png"] = (conflict, "label_conflict")
    files["circle/conflict.png"] = (conflict, "label_conflict")
    for rel, (data_bytes, _) in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(data_bytes)
    return {rel: reason for rel, (_, reason) in files.items() if reason}


def write_convertible_modes(data: Path) -> dict[str, str]:
    """Images in modes clean converts to RGB; {data-relative path: original mode}."""
    lum = Image.linear_gradient("L").resize((32, 32))
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    sixteen = Image.new("I;16", (32, 32))
    sixteen.paste(32896, (0, 0, 32, 32))  # 0x8080: 128 in 8 bits; Pillow alone clips to 255
    files = {
        "square/cmyk.jpg": (Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", {}),
        "square/palette_transparent.png": (palette, "PNG", {"transparency": 1}),
        "square/la.png": (Image.merge("LA", (lum, Image.new("L", (32, 32), 0))), "PNG", {}),
        "square/sixteen.png": (sixteen, "PNG", {}),
        "square/rgba.png": (Image.new("RGBA", (32, 32), (0, 0, 0, 0)), "PNG", {}),
    }
    modes = {}
    for rel, (img, fmt, save) in files.items():
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(image_bytes(img, fmt, **save))
        modes[rel] = img.mode
    return modes


# --- hostile input: what a messy real folder holds, by kind -------------------------------
#
# Every case ends kept or refused/rejected with a reason: none may crash, hang or be copied
# into data/ when it should be refused. A FIFO must never be opened for reading (it would
# block forever): `fifo_watch` turns such a hang into a test failure.


@dataclass(frozen=True)
class Expect:
    """What should become of one hostile entry."""

    refused: str = ""  # collect's refusal reason; "" when it is collected
    rejected: str = ""  # clean's rejection reason for a collected file; "" when it is kept


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """A PNG with one more chunk right after IHDR (8-byte signature + 25-byte IHDR)."""
    return png[:33] + _chunk(kind, body) + png[33:]


def _frames(fmt: str, **save) -> bytes:
    frames = [Image.new("RGB", (24, 24), c) for c in ("red", "green", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], **save)
    return buf.getvalue()


def hostile_images() -> dict[str, tuple[bytes, str]]:
    """{file name: (bytes, clean's rejection reason or "")} of formats and modes that Pillow
    supports only in part; multi-frame files are red in their first frame, as are the
    phone formats (HEIC, AVIF)."""
    rng = random.Random(11)
    png = image_bytes(shape_image("circle", rng, 24))
    bomb = zlib.compress(b"\0" * (16 * 2**20))  # 16 MiB inflated, over Pillow's 1 MiB text cap
    int32 = np.full((24, 24), 1 << 20, dtype=np.int32)  # beyond 16 bits: no defined range
    return {
        "red.heic": (image_bytes(Image.new("RGB", (24, 24), "red"), "HEIF"), ""),  # phones
        "red.avif": (image_bytes(Image.new("RGB", (24, 24), "red"), "AVIF"), ""),
        "anim.gif": (_frames("GIF"), ""),
        "pages.tif": (_frames("TIFF"), ""),
        "anim.png": (_frames("PNG"), ""),  # APNG
        "anim.webp": (_frames("WEBP", lossless=True), ""),
        "bilevel.png": (image_bytes(shape_image("square", rng, 24).convert("1")), ""),
        "sixteen.tif": (image_bytes(Image.new("I;16", (24, 24), 40000), "TIFF"), ""),
        "int32_small.tif": (image_bytes(Image.new("I", (24, 24), 30000), "TIFF"), ""),
        "int32_large.tif": (image_bytes(Image.fromarray(int32, "I"), "TIFF"), "unsupported_mode"),
        "float32.tif": (image_bytes(Image.new("F", (24, 24), 0.25), "TIFF"), "unsupported_mode"),
        "text_bomb.png": (_with_chunk(png, b"zTXt", b"comment\0\0" + bomb), "corrupt"),
        "icc_bomb.png": (_with_chunk(png, b"iCCP", b"icc\0\0" + bomb), "corrupt"),
        "big_text.png": (_with_chunk(png, b"tEXt", b"comment\0" + b"x" * 2**21), ""),
        "big_icc.jpg": (
            image_bytes(shape_image("square", rng, 24), "JPEG", icc_profile=rng.randbytes(2**20)),
            "",
        ),
        # Pillow knows these formats but cannot decode them here (no loader / no Ghostscript)
        "stub.bufr": (b"BUFR" + bytes(60), "corrupt"),
        "drawing.eps": (
            b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 24 24\n0 0 moveto 24 24 lineto\n",
            "" if shutil.which("gs") else "corrupt",
        ),
        # formats Pillow only writes, or does not know
        "page.pdf": (image_bytes(Image.new("RGB", (24, 24)), "PDF"), "not_an_image"),
        "vector.svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg" width="24" height="24"/>',
            "not_an_image",
        ),
    }


def _socket(path: Path) -> None:
    with contextlib.chdir(path.parent):  # AF_UNIX paths are limited to ~108 bytes
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path.name)
        sock.close()  # the socket file stays


def write_hostile_tree(root: Path) -> dict[Path, Expect]:
    """An ImageFolder tree root/<label>/<file> with every kind of hostile entry.

    Returns {path: Expect} (collect reports a path as printable(str(path))). The
    hostile entries sit beside good images, which must be collected all the same.
    Meant for the default limits (--max-mb 50) and CleanParams().
    """
    rng = random.Random(3)
    outside = root.parent / f"{root.name}-outside.png"
    outside.write_bytes(image_bytes(shape_image("circle", rng)))
    circle, square = root / "circle", root / "square"
    for folder in (circle, square):
        folder.mkdir(parents=True)
    expect: dict[Path, Expect] = {}

    def image(path: Path, data: bytes | None = None, rejected: str = "") -> None:
        path.write_bytes(data if data is not None else image_bytes(shape_image("square", rng)))
        expect[path] = Expect(rejected=rejected)

    for i in range(3):  # ordinary images
        image(circle / f"good_{i}.png")
        image(square / f"good_{i}.png")

    # special files: never opened, refused from stat
    os.mkfifo(circle / "fifo.png")
    expect[circle / "fifo.png"] = Expect("not_a_file")
    _socket(circle / "socket.png")
    expect[circle / "socket.png"] = Expect("not_a_file")
    try:  # a character device (needs root); /dev/null's numbers: read, it would be empty
        os.mknod(circle / "null.png", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        expect[circle / "null.png"] = Expect("not_a_file")
    except OSError:
        pass
    (circle / "zero.png").symlink_to("/dev/zero")  # endless if read; and outside the tree
    expect[circle / "zero.png"] = Expect("symlink_escape")
    (circle / "dangling.png").symlink_to(circle / "nowhere.png")
    expect[circle / "dangling.png"] = Expect("missing")
    (circle / "loop_a.png").symlink_to(circle / "loop_b.png")
    (circle / "loop_b.png").symlink_to(circle / "loop_a.png")
    (circle / "self.png").symlink_to(circle / "self.png")
    for name in ("loop_a.png", "loop_b.png", "self.png"):
        expect[circle / name] = Expect("unreadable")
    (circle / "escape.png").symlink_to(outside)
    expect[circle / "escape.png"] = Expect("symlink_escape")
    (circle / "z_alias.png").symlink_to(circle / "good_0.png")  # inside: collected
    expect[circle / "z_alias.png"] = Expect(rejected="duplicate")
    (circle / "up").symlink_to(root)  # a folder link (a loop if followed)
    expect[circle / "up"] = Expect("not_a_file")
    (root / "loose.png").write_bytes(image_bytes(shape_image("circle", rng)))
    expect[root / "loose.png"] = Expect("no_label")

    # file names
    image(Path(os.fsdecode(bytes(circle) + b"/caf\xe9.png")))  # Latin-1, not UTF-8
    bad_label = Path(os.fsdecode(bytes(root) + b"/squ\xe4re"))
    bad_label.mkdir()
    image(bad_label / "in_bad_label.png")
    image(circle / ("a" * 251 + ".png"))  # 255 bytes, the most ext4 allows
    image(circle / ("猫" * 83 + ".png"))  # 253 bytes in UTF-8
    image(circle / "-rf.png")
    image(circle / "new\nline.png")
    image(circle / unicodedata.normalize("NFD", "café.png"))  # kept (sorts first) ...
    nfc = circle / unicodedata.normalize("NFC", "café.png")  # ... its NFC twin would land on it
    nfc.write_bytes(image_bytes(shape_image("circle", rng)))
    expect[nfc] = Expect("name_clash")

    # sizes
    huge = circle / "huge.png"
    with huge.open("wb") as fh:
        fh.truncate(4 * 2**30)  # 4 GiB, sparse: costs no disk, must never be read
    expect[huge] = Expect("too_large")
    image(circle / "empty.png", b"", rejected="empty")

    # formats and modes
    for name, (data, reason) in hostile_images().items():
        image(square / name, data, rejected=reason)
    return expect


def write_unreadable_entries(data: Path) -> dict[str, str]:
    """Entries of data/<label>/ that clean cannot read; {data-relative path: reason}.

    Collect never writes such things, but a user's hands, a sync tool or a file
    removed while clean runs can.
    """
    circle = data / "circle"
    circle.mkdir(parents=True, exist_ok=True)
    os.mkfifo(circle / "fifo.png")
    (circle / "dev.png").symlink_to("/dev/null")
    (circle / "dangling.png").symlink_to(circle / "nowhere.png")
    (circle / "loop.png").symlink_to(circle / "loop.png")
    Path(os.fsdecode(bytes(circle) + b"/caf\xe9.png")).write_bytes(
        image_bytes(Image.new("RGB", (20, 20)))
    )
    return {
        "circle/fifo.png": "not_a_file",
        "circle/dev.png": "not_a_file",
        "circle/dangling.png": "missing",
        "circle/loop.png": "unreadable",
        "circle/caf\\xe9.png": "bad_name",
    }


@contextlib.contextmanager
def fifo_watch(root: Path) -> Iterator[list[str]]:
    """Yields a list of the FIFOs under `root` that something opened for reading.

    A reader of a FIFO blocks until a writer comes; this one comes (every 20 ms it
    tries a non-blocking open for writing, which succeeds only once a reader waits),
    hands it a few bytes and closes: the reader goes on, and the test can fail
    instead of hanging.
    """
    fifos = [p for p in root.rglob("*") if p.is_fifo()]
    opened: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.02):
            for fifo in fifos:
                try:
                    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: no reader (or gone)
                    continue
                opened.append(printable(str(fifo)))
                with contextlib.suppress(OSError):
                    os.write(fd, b"not an image")
                os.close(fd)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield opened
    finally:
        stop.set()
        thread.join()


def write_cache(clean_dir: Path, images: dict[str, Image.Image]) -> None:
    """A clean-stage cache holding `images` by content hash (as the clean stage writes it)."""
    import numpy as np

    from tasks.shards import ShardWriter, shard_dir, write_locations

    writer = ShardWriter(shard_dir(clean_dir))
    for sha, img in images.items():
        writer.add(sha, "test", np.asarray(img.convert("RGB")))
    write_locations(clean_dir, writer.close())
