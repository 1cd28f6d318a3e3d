"""Image checks that run inside img2dataset's download workers, before its resizer.

img2dataset decodes with OpenCV (`IMREAD_UNCHANGED`), which leaves four cases wrong:
16-bit images are clipped to white when encoded as JPEG, grayscale stays one channel,
EXIF orientation is ignored, and a truncated JPEG decodes "successfully" as grey. It also
decodes a decompression bomb in full before its area check. `CheckedResizer` looks at every
downloaded file first:

- empty bodies, HTML/text and unknown formats, truncated files and images over
  `max_image_pixels` are refused with a message `"<reason>: <detail>"` that img2dataset stores
  as the sample's `error_message` (the join turns the reason into the rejection reason);
- a clean 8-bit RGB JPEG/PNG/WebP goes straight to img2dataset (no extra decode);
- anything else (CMYK, 16-bit, alpha, palette, grayscale, animated, EXIF-rotated, other
  formats) is decoded with Pillow, converted to 8-bit RGB (alpha over white, first frame,
  orientation applied) and handed on as an uncompressed BMP.

So every image that comes out is RGB. Only `CheckedResizer` crosses process boundaries
(pickled with img2dataset's Downloader), so this module stays light to import.
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

# albumentations (imported by img2dataset's resizer) asks PyPI for a newer version on import;
# offline that is a wait for nothing, in every download worker.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
from img2dataset.resizer import Resizer  # noqa: E402
from PIL import Image, ImageOps, UnidentifiedImageError  # noqa: E402

FAST_FORMATS = ("JPEG", "PNG", "WEBP")
ORIENTATION_TAG = 0x0112


class ImageRejected(Exception):
    """An image we will not use; str() is "<reason>: <detail>"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class CheckedResizer(Resizer):
    """img2dataset's Resizer with the checks above in front of it (same call signature)."""

    def __init__(self, *args: Any, max_image_pixels: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_image_pixels = max_image_pixels

    def __call__(self, img_stream: io.BytesIO, blurring_bbox_list: Any = None) -> tuple:
        try:
            data = img_stream.getvalue() if isinstance(img_stream, io.BytesIO) else img_stream.read()
            prepared = prepare(data, self.max_image_pixels)
        except ImageRejected as err:
            return None, None, None, None, None, str(err)
        except Exception as err:  # noqa: BLE001 -- raised here, img2dataset would drop the row unrecorded
            return None, None, None, None, None, f"image_decode_failed: {type(err).__name__}: {err}"
        return super().__call__(io.BytesIO(prepared), blurring_bbox_list)


def prepare(data: bytes, max_image_pixels: int) -> bytes:
    """The bytes to hand to OpenCV: `data` itself when it is safe, else an RGB BMP.

    Raises ImageRejected with the reason."""
    im = open_image(data, max_image_pixels)
    if is_clean(im, data):
        return data
    rgb = to_rgb(im)
    out = io.BytesIO()
    rgb.save(out, format="BMP")
    return out.getvalue()


def open_image(data: bytes, max_image_pixels: int) -> Image.Image:
    """Pillow's lazy open (header only) plus the size check; nothing is decoded yet."""
    if not data:
        raise ImageRejected("image_empty", "the server sent 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageRejected("image_too_large", f"{err} (download.max_image_pixels={max_image_pixels})") from None
    except UnidentifiedImageError:
        raise ImageRejected("image_not_an_image", f"{sniff(data)} ({len(data)} bytes)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        if magic_format(data) is None:
            raise ImageRejected("image_not_an_image", f"{sniff(data)} ({len(data)} bytes; {err})") from None
        reason = "image_truncated" if "truncated" in str(err).lower() else "image_decode_failed"
        raise ImageRejected(reason, f"{magic_format(data)} header unreadable ({len(data)} bytes): {err}") from None
    width, height = im.size
    if width * height > max_image_pixels:
        raise ImageRejected(
            "image_too_large",
            f"{width}x{height} = {width * height} pixels > download.max_image_pixels={max_image_pixels} "
            "(decompression-bomb guard)",
        )
    return im


MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"GIF8": "GIF", b"BM": "BMP",
         b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def magic_format(data: bytes) -> str | None:
    """The image format the first bytes announce, if any (to tell a cut-off image from junk)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in MAGIC.items() if data.startswith(magic)), None)


def sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "an HTML/XML page, not an image"
    if head.startswith((b"{", b"[")):
        return "JSON, not an image"
    return f"unknown format starting with {data[:8]!r}"


def is_clean(im: Image.Image, data: bytes) -> bool:
    """True when OpenCV would decode `data` to the right 8-bit RGB picture by itself."""
    if im.format not in FAST_FORMATS or im.mode != "RGB" or getattr(im, "n_frames", 1) > 1:
        return False
    if any(";16" in _rawmode(tile) for tile in getattr(im, "tile", [])):
        return False  # 16-bit PNG: Pillow reports "RGB" but OpenCV keeps 16 bits
    if im.format == "JPEG" and im.getexif().get(ORIENTATION_TAG, 1) != 1:
        return False
    return is_complete(im.format, data)


def _rawmode(tile: Any) -> str:
    args = tile[3]
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return args if isinstance(args, str) else ""


def is_complete(fmt: str, data: bytes) -> bool:
    """Does the file end where its format says it ends? (A truncated body does not.)"""
    if fmt == "JPEG":
        return data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return data.endswith(b"IEND\xaeB`\x82")
    if fmt == "WEBP":
        return int.from_bytes(data[4:8], "little") + 8 <= len(data)
    return False


def to_rgb(im: Image.Image) -> Image.Image:
    """Decode fully and convert to 8-bit RGB: first frame, EXIF orientation, alpha over white."""
    try:
        im.seek(0)
        im.load()
        im = ImageOps.exif_transpose(im) or im
    except Image.DecompressionBombError as err:
        raise ImageRejected("image_too_large", str(err)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        reason = "image_truncated" if "truncated" in str(err) else "image_decode_failed"
        raise ImageRejected(reason, f"{im.format} {im.mode} {im.size[0]}x{im.size[1]}: {err}") from None
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = Image.fromarray(_to_8bit(np.asarray(im)))
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    try:
        if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im.convert("RGBA"))
        return im.convert("RGB")
    except ValueError as err:
        raise ImageRejected("image_decode_failed", f"cannot convert {im.mode} to RGB: {err}") from None


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Scale a 16-bit (or wider) single-channel array to 0..255 instead of clipping it."""
    values = values.astype(np.float64)
    top = 65535.0 if values.max(initial=0) > 255 else 255.0
    return np.clip(np.rint(values * 255.0 / top), 0, 255).astype(np.uint8)
