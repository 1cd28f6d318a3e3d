"""COCO object boxes: `instances_*.json`, read into an index the context generator looks up.

    {"images": [{id, file_name, width, height, ...}],
     "categories": [{id, name, supercategory}],
     "annotations": [{id, image_id, category_id, bbox: [x, y, w, h] (pixels), area, iscrowd, ...}]}

LLaVA's instructions were written from each image's captions plus its object boxes; this reader
supplies the boxes, normalised the way LLaVA wrote them (`generators.context.normalise_box`).
It is not a record reader: an instances file holds no text to train on, only what a record's
image contains, so it builds an index by image id (and by file name, for sources that name
their images by file) instead of yielding items.

COCO train2017's instances file is about 450 MB: it is streamed three times, one list each
time, and only the short per-image entries and the boxes are kept. Nothing bad raises: an image
or annotation that cannot be used becomes a row of `problems` (location, reason, detail), and
malformed JSON ends the list it is in with one `invalid_json` problem.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from generators.context import Box, normalise_box
from pipelines.sources.jsonstream import JsonStreamError, iter_json_array

Problem = tuple[str, str, str]
"""(location "file[index]", reason code, detail)."""


@dataclass(frozen=True, slots=True)
class ImageBoxes:
    """One image of the file and its object boxes, in file order."""

    image_id: int
    file_name: str
    width: int
    height: int
    boxes: tuple[Box, ...]


@dataclass(slots=True)
class InstancesIndex:
    """The images of an instances file by id, and by file name (base name -> image id)."""

    images: dict[int, ImageBoxes] = field(default_factory=dict)
    by_file: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def find(self, image_id: int | None, file_name: str | None) -> ImageBoxes | None:
        """The image with this id, else the one whose file has the base name of `file_name`
        (a path or URL works: "train2017/000000000139.jpg" finds "000000000139.jpg")."""
        if image_id is not None and image_id in self.images:
            return self.images[image_id]
        if file_name:
            found = self.by_file.get(base_name(file_name))
            if found is not None:
                return self.images[found]
        return None


@dataclass(slots=True)
class _Image:
    file_name: str
    width: int
    height: int
    boxes: list[Box] = field(default_factory=list)


def base_name(file_name: str) -> str:
    """The last part of a path or URL, either slash."""
    return file_name.replace("\\", "/").rsplit("/", 1)[-1]


def read_coco_instances(path: str | Path) -> InstancesIndex:
    """Index the instances file at `path` (plain or .gz); an unreadable file raises OSError."""
    problems: list[Problem] = []
    images = _read_images(path, problems)
    categories = _read_categories(path, problems)
    _read_annotations(path, images, categories, problems)
    index = InstancesIndex(problems=problems)
    for image_id, image in images.items():
        index.images[image_id] = ImageBoxes(image_id, image.file_name, image.width, image.height, tuple(image.boxes))
        index.by_file.setdefault(base_name(image.file_name), image_id)
    return index


def _rows(path: str | Path, key: str, problems: list[Problem]) -> Iterator[tuple[str, Any]]:
    """(location, row) of the list at `key`; malformed JSON ends it with one problem (the same
    error met again while skipping to a later list is not repeated)."""
    try:
        for index, row in iter_json_array(path, key=key):
            yield f"{path}[{index}]", row
    except JsonStreamError as err:
        reason = "missing_field" if err.reason.startswith("missing field") else "invalid_json"
        problem = (err.location, reason, err.reason)
        if problem not in problems:
            problems.append(problem)


def _read_images(path: str | Path, problems: list[Problem]) -> dict[int, _Image]:
    images: dict[int, _Image] = {}
    for location, row in _rows(path, "images", problems):
        error = _image_error(row, images)
        if error:
            problems.append((location, "bad_image", error))
        else:
            images[row["id"]] = _Image(row["file_name"], row["width"], row["height"])
    return images


def _image_error(row: Any, images: dict[int, _Image]) -> str | None:
    if not isinstance(row, dict):
        return f"image entry is a {type(row).__name__}, not an object"
    if not _is_int(row.get("id")):
        return f"id {row.get('id')!r} is not an integer"
    if row["id"] in images:
        return f"image id {row['id']} appears twice"
    if not isinstance(row.get("file_name"), str) or not row["file_name"]:
        return f"image {row['id']}: file_name {row.get('file_name')!r} is not a file name"
    for side in ("width", "height"):
        if not _is_int(row.get(side)) or row[side] <= 0:
            return f"image {row['id']}: {side} {row.get(side)!r} is not a positive integer"
    return None


def _read_categories(path: str | Path, problems: list[Problem]) -> dict[int, str]:
    categories: dict[int, str] = {}
    for location, row in _rows(path, "categories", problems):
        if isinstance(row, dict) and _is_int(row.get("id")) and isinstance(row.get("name"), str) and row["name"]:
            categories[row["id"]] = row["name"]
        else:
            problems.append((location, "bad_category", f"category {row!r:.80} needs an integer id and a name"))
    return categories


def _read_annotations(path: str | Path, images: dict[int, _Image], categories: dict[int, str],
                      problems: list[Problem]) -> None:
    for location, row in _rows(path, "annotations", problems):
        if not isinstance(row, dict):
            problems.append((location, "bad_annotation", f"annotation is a {type(row).__name__}, not an object"))
            continue
        image = images.get(row["image_id"]) if _is_int(row.get("image_id")) else None
        if image is None:
            problems.append((location, "unknown_image", f"image_id {row.get('image_id')!r} is not in `images`"))
        elif not _is_int(row.get("category_id")) or row["category_id"] not in categories:
            problems.append((location, "unknown_category",
                             f"category_id {row.get('category_id')!r} is not in `categories`"))
        else:
            box, error = _box(row.get("bbox"), image)
            if box is None:
                problems.append((location, "bad_box", error))
            else:
                image.boxes.append(Box(categories[row["category_id"]], box))


def _box(bbox: Any, image: _Image) -> tuple[tuple[float, float, float, float] | None, str]:
    """The normalised box, or None and why not."""
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
        return None, f"bbox {bbox!r:.80} is not 4 numbers [x, y, w, h]"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return None, f"bbox {bbox!r} has width or height <= 0"
    x1, y1, x2, y2 = normalise_box(x, y, w, h, image.width, image.height)
    if x2 <= x1 or y2 <= y1:
        return None, f"bbox {bbox!r} lies outside the {image.width}x{image.height} image"
    return (x1, y1, x2, y2), ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
