"""Decode one raw file into an upright RGB image, or say why it cannot be used.

Pillow does the work: its decompression-bomb limit is checked from the header
before any pixel is decoded, `load()` decodes fully (so a truncated file fails
here, not in training), and EXIF orientation is applied. A JPEG bigger than
twice the cache size is decoded at a reduced scale in the DCT domain (Pillow's
`draft`, as `Image.thumbnail` does): every byte is still decoded, in about a
seventh of the time for a phone photo. A multi-frame file
(animated GIF/PNG/WebP, multi-page TIFF) gives its first frame. HEIC/HEIF phone
photos are read through pillow-heif's Pillow plugin.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # HEIC/HEIF, what phones save photos as; Pillow reads AVIF itself
    from pillow_heif import register_heif_opener
except ImportError:  # a Python without it rejects them as not_an_image
    pass
else:
    register_heif_opener()

# Modes with a meaningful RGB rendering. Others (e.g. 'F', 32-bit float with no
# defined range) are rejected as unsupported_mode rather than guessed at.
ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
PLAIN_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


class RejectedImage(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Decoded:
    image: Image.Image  # RGB, upright; a large JPEG at a reduced scale (decode's max_side)
    mode: str  # the file's own mode before conversion
    size: tuple[int, int]  # the file's upright size (width, height), at full scale


def to_rgb(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGB for every supported mode: alpha is composited on `background`, 16-bit is scaled."""
    mode = img.mode
    if mode in ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    if mode in SIXTEEN_BIT:
        # Pillow's own I;16 → RGB conversion clips at 255; scale the 16-bit range instead
        values = np.asarray(img, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            # 32-bit integers beyond 16 bits (or negative) have no agreed black and white
            raise RejectedImage(
                "unsupported_mode",
                f"mode {mode} values {values.min()}..{values.max()} exceed the 16-bit range",
            )
        return Image.fromarray((values >> 8).astype(np.uint8), "L").convert("RGB")
    if mode in PLAIN_MODES:
        return img.convert("RGB")
    raise RejectedImage("unsupported_mode", f"mode {mode} has no defined RGB rendering")


def decode(
    raw: bytes, background: tuple[int, int, int], max_pixels: int, max_side: int | None = None
) -> Decoded:
    """Fully decode, apply EXIF orientation and return an RGB image, or raise RejectedImage.

    With `max_side`, a large JPEG comes out reduced, never below twice that on either
    side (what a clean resize to `max_side` needs)."""
    if not raw:
        raise RejectedImage("empty", "zero-byte file")
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
            size = img.size
            if max_side and img.format == "JPEG":
                img.draft(None, (2 * max_side, 2 * max_side))
            img.load()
            mode, loaded = img.mode, img.size
            img = ImageOps.exif_transpose(img)
            if img.size != loaded:  # turned a quarter: width and height swap
                size = size[::-1]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise RejectedImage("decompression_bomb", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise RejectedImage("not_an_image", "Pillow cannot identify the format") from exc
    except Exception as exc:  # a broken file can make any decoder raise anything
        raise RejectedImage("corrupt", f"{type(exc).__name__}: {exc}") from exc
    try:
        rgb = to_rgb(img, background)
    except RejectedImage:
        raise
    except Exception as exc:  # a mode Pillow opens but cannot convert (e.g. 'La')
        raise RejectedImage("unsupported_mode", f"mode {mode}: {exc}") from exc
    return Decoded(rgb, mode, size)
