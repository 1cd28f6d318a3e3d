"""What the generator knows about one image: its captions, object boxes, QA and OCR text.

LLaVA gave a text-only GPT-4 exactly this ("symbolic representation" of the image): the
captions, then one line per object, `name: [x1, y1, x2, y2]` with coordinates normalised to
[0, 1]. `Context` is that, plus the image's VQA answers and OCR tokens where a source has them.

Two contexts with the same content have the same `hash()` whatever order the parts came in, so
the response cache and the demo corpus (which writes the replies a good model would give) agree
on keys without agreeing on reading order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

BOX_DECIMALS = 3


@dataclass(frozen=True, slots=True)
class Box:
    """An object: its category name and box `(x1, y1, x2, y2)`, each in [0, 1]."""

    name: str
    box: tuple[float, float, float, float]

    def line(self) -> str:
        return f"{self.name}: [{', '.join(f'{v:.{BOX_DECIMALS}f}' for v in self.box)}]"


def normalise_box(x: float, y: float, w: float, h: float, width: float, height: float) -> tuple[float, ...]:
    """A COCO box (left, top, width, height in pixels) as LLaVA wrote it: corners divided by the
    image size, clipped to [0, 1], rounded to `BOX_DECIMALS`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size {width}x{height} must be positive")

    def clip(v: float) -> float:
        return round(min(1.0, max(0.0, v)), BOX_DECIMALS)

    return (clip(x / width), clip(y / height), clip((x + w) / width), clip((y + h) / height))


@dataclass(slots=True)
class Context:
    """The annotations of one image (`image` is the local file, for lineage and `context: image`)."""

    image: str
    captions: list[str] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    qa: list[tuple[str, str]] = field(default_factory=list)
    ocr: list[str] = field(default_factory=list)
    image_sha256: str | None = None

    def is_empty(self) -> bool:
        return not (self.captions or self.boxes or self.qa or self.ocr)

    def canonical(self) -> dict:
        """Content only, in a fixed order (not the file path: the same image under another run
        folder is the same context)."""
        return {
            "captions": sorted(set(self.captions)),
            "boxes": sorted((b.name, list(b.box)) for b in self.boxes),
            "qa": sorted({(q, a) for q, a in self.qa}),
            "ocr": sorted(set(self.ocr)),
        }

    def hash(self, with_image: bool = False) -> str:
        """sha256 of the canonical content (plus the image's sha256 when the image is sent)."""
        data = self.canonical()
        if with_image:
            data["image_sha256"] = self.image_sha256
        blob = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def text(self) -> str:
        """The context as the prompt shows it: captions, then boxes, then QA and OCR (canonical order)."""
        data = self.canonical()
        parts: list[str] = []
        if data["captions"]:
            parts.append("图片描述 (captions):\n" + "\n".join(data["captions"]))
        if data["boxes"]:
            parts.append("物体与位置 (objects, [x1, y1, x2, y2]):\n"
                         + "\n".join(Box(n, tuple(b)).line() for n, b in data["boxes"]))
        if data["qa"]:
            parts.append("已知问答 (QA):\n" + "\n".join(f"Q: {q}\nA: {a}" for q, a in data["qa"]))
        if data["ocr"]:
            parts.append("图中文字 (OCR):\n" + " ".join(data["ocr"]))
        return "\n\n".join(parts)
