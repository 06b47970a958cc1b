import io
import random

import pandas as pd
from PIL import Image

from params import CleanParams
from tasks.clean import clean_images, decode, list_raw_images, write_manifest
from tests.images import shape_image, truncated_png, write_image_folder


def _rotated_jpeg_bytes() -> bytes:
    """A 40x20 JPEG whose EXIF says 'rotate 90°': upright it is 20x40."""
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    return buf.getvalue()


def test_clean_keeps_good_images_and_records_every_rejection(tmp_path):
    data = tmp_path / "data"
    write_image_folder(data, per_class=3)
    circles = data / "circle"
    (circles / "empty.png").write_bytes(b"")
    (circles / "notes.txt").write_text("not an image")
    truncated_png(circles / "truncated.png")
    (circles / "copy.png").write_bytes((circles / "circle_0_001.png").read_bytes())
    (circles / "tiny.png").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(circles / "tiny.png")
    rgba = Image.new("RGBA", (30, 30), (0, 0, 0, 0))
    rgba.save(data / "square" / "transparent.png")
    (data / "square" / "rotated.jpg").write_bytes(_rotated_jpeg_bytes())
    Image.new("CMYK", (30, 30), (0, 255, 0, 0)).save(data / "square" / "cmyk.jpg")

    out = tmp_path / "clean"
    records, rejected = clean_images.fn(data, out, CleanParams(max_side=32, min_side=8))
    manifest = write_manifest.fn(records, rejected, out)

    reasons = {r.path: r.reason for r in rejected}
    assert reasons == {
        "circle/empty.png": "empty",
        "circle/notes.txt": "not_an_image",
        "circle/truncated.png": "corrupt",
        "circle/tiny.png": "too_small",
        "circle/copy.png": "duplicate",
    }
    on_disk = pd.read_csv(out / "rejected.csv")
    assert set(on_disk["path"]) == set(reasons)
    assert len(manifest) == 9 + 3
    assert set(manifest["label"]) == {"circle", "square", "triangle"}
    assert manifest["sha256"].is_unique
    for row in manifest.itertuples():
        with Image.open(out / row.cache) as cached:
            assert cached.mode == "RGB"
            assert max(cached.size) <= 32
    rotated = manifest.set_index("path").loc["square/rotated.jpg"]
    assert (rotated.width, rotated.height) == (20, 40)  # EXIF orientation applied
    transparent = manifest.set_index("path").loc["square/transparent.png"]
    with Image.open(out / transparent.cache) as img:
        assert img.getpixel((5, 5)) == (255, 255, 255)  # composited on the background
    assert pd.read_parquet(out / "manifest.parquet").equals(manifest)


def test_decompression_bomb_is_rejected():
    img = shape_image("square", random.Random(0), size=64)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    from tasks.clean import RejectedImage

    try:
        decode(buf.getvalue(), CleanParams(max_pixels=1000))
    except RejectedImage as exc:
        assert exc.reason == "decompression_bomb"
    else:
        raise AssertionError("a 4096-pixel image passed a 1000-pixel limit")


def test_list_raw_images_ignores_hidden_and_top_level_files(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"x")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "loose.png").write_bytes(b"x")
    assert list_raw_images(tmp_path) == [("cat/a.png", "cat")]
