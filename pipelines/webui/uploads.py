"""What the page accepts as an image: the pipeline's own checks, before anything decodes the file.

An upload (or a webcam picture, or an example) arrives as a file in Gradio's upload folder. Gradio's
Image component would open it with Pillow in its own pre-processing, before any check of ours, so
the image events take the raw payload (`preprocess=False`) and hand its path here:

- over `max_bytes` on disk: refused (Gradio's `max_file_size` refuses larger uploads first; this
  covers files that reach us another way, e.g. examples);
- then the download step's checks, as `vcla chat --image` runs them: empty, not an image (HTML,
  JSON, unknown bytes), truncated, more pixels than `download.max_image_pixels` (a decompression
  bomb is refused from its header, before it is decoded), and the decode to 8-bit RGB.

A refusal is an `UploadRejected` whose message the page shows; nothing else is raised, so a hostile
file never takes the server down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

DEFAULT_MAX_BYTES = 20 << 20
"""Largest upload accepted (20 MiB): a phone photo fits; the model sees a 224-pixel square anyway."""


class UploadRejected(ValueError):
    """An uploaded file that is not used; str() says why, in words the page can show."""


def payload_path(payload: Any) -> Path | None:
    """The file path of a raw Gradio file payload (a FileData dict), a plain path, or None."""
    if payload is None:
        return None
    if isinstance(payload, dict):
        path = payload.get("path")
        return Path(path) if path else None
    return Path(payload)


def checked_upload(path: Path, max_bytes: int, max_pixels: int) -> Image.Image:
    """The uploaded file decoded to RGB, or UploadRejected saying what was wrong with it."""
    from pipelines.steps.download.images import ImageRejected, open_image, to_rgb

    try:
        size = path.stat().st_size
    except OSError as e:
        raise UploadRejected(f"the upload could not be read ({type(e).__name__}); upload it again") from None
    if size > max_bytes:
        raise UploadRejected(f"{size / 2**20:.1f} MiB is over the {max_bytes / 2**20:.0f} MiB limit; "
                             "upload a smaller image")
    try:
        return to_rgb(open_image(path.read_bytes(), max_pixels))
    except ImageRejected as e:
        raise UploadRejected(f"{e}; upload a JPEG, PNG or WebP image") from None
    except MemoryError:
        raise UploadRejected("the image is too large to decode; upload a smaller image") from None


def takes_several_images(template: str) -> bool:
    """Whether a checkpoint's chat template can hold several images: they stand inline in the text of
    their turns, so every turn needs text (the stage-1 template `none` places one image and no text)."""
    from templates.registry import get_template

    t = get_template(template)
    return t.supports_image and "{text}" in t.first_turn and "{text}" in t.turn
