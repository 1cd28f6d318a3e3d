"""Per-image work of the curate step, run as tasks on the recipe's task runner: decode each
downloaded image once and measure what the filters need (content hash, pHash, decoded size).

`image_facts(paths)` is one task's work; it never raises for a bad image: an image that does not
decode (not an image, truncated, a bomb) comes back with `error` set and is rejected by the step.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from PIL import Image

from common.files import sha256_file
from curators.near_dups import phash64


@dataclass(frozen=True, slots=True)
class ImageFacts:
    path: str
    sha256: str | None = None
    phash: int | None = None
    width: int = 0
    height: int = 0
    error: str | None = None
    thumb: bytes | None = None
    """8x8 RGB thumbnail (192 bytes), when the near-duplicate check confirms with it."""


THUMB_SIDE = 8


def image_facts(job: tuple[list[str], bool]) -> list[ImageFacts]:
    """Facts of each image of `job = (paths, with_thumbnails)`, in order (a task: plain values in and out)."""
    paths, thumbs = job
    return [_facts(p, thumbs) for p in paths]


def _facts(path: str, thumb: bool) -> ImageFacts:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                rgb = im.convert("RGB")
        small = rgb.resize((THUMB_SIDE, THUMB_SIDE), Image.BOX).tobytes() if thumb else None
        return ImageFacts(path, sha256_file(path), phash64(rgb), rgb.width, rgb.height, thumb=small)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return ImageFacts(path, error=f"{type(e).__name__}: {e}"[:300])
