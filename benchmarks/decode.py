"""Clean's decode of phone photos: a JPEG reduced in the DCT domain vs a full decode.

    python -m benchmarks.decode [--images 20] [--rounds 3]

Both sides do what the clean stage caches: decode the file's bytes (EXIF-upright,
RGB) and resize to `max_side` (params/clean.yaml) with LANCZOS. The baseline
decodes every pixel at full scale first; visiontune lets the JPEG decoder
reduce by 1/2, 1/4 or 1/8 on the way (never below twice `max_side`). The
photos are 4032 × 3024 JPEGs at quality 90, a 12-megapixel phone's size, made
from scikit-image's sample photographs. Best of `rounds`, single process.
"""

from __future__ import annotations

import argparse
import io

from benchmarks.report import Result, at_least, result, stopwatch


def phone_photos(count: int) -> list[bytes]:
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    photos = []
    for i in range(count):
        img = Image.fromarray(sources[i % len(sources)]).resize((4032, 3024))
        buf = io.BytesIO()
        img.rotate(i, expand=False).save(buf, "JPEG", quality=90)
        photos.append(buf.getvalue())
    return photos


def seconds_per_image(photos: list[bytes], reduce: bool, rounds: int) -> float:
    from params import CleanParams
    from tasks.clean_cache import prepare
    from tasks.decode import decode

    params = CleanParams()
    best = float("inf")
    for _ in range(rounds):
        with stopwatch() as t:
            for raw in photos:
                decoded = decode(
                    raw,
                    tuple(params.background),  # type: ignore[arg-type]
                    params.max_pixels,
                    params.max_side if reduce else None,
                )
                prepare(decoded, params.max_side)
        best = min(best, t[0] / len(photos))
    return best


def run(images: int = 20, rounds: int = 3) -> list[Result]:
    photos = phone_photos(images)
    full = seconds_per_image(photos, reduce=False, rounds=rounds)
    reduced = seconds_per_image(photos, reduce=True, rounds=rounds)
    return [
        result(
            "decode",
            "clean decode of 12 MP phone JPEGs: DCT-reduced vs full-scale decode",
            full / reduced,
            "×",
            (at_least, 3.0),
            f"{1000 * reduced:.0f} ms vs {1000 * full:.0f} ms per photo ({images} photos)",
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    run(args.images, args.rounds)


if __name__ == "__main__":
    main()
