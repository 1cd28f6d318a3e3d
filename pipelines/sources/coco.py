"""COCO captions: `captions_*.json` with an `images` list and an `annotations` list.

    {"images": [{id, file_name, coco_url, width, height, ...}],
     "annotations": [{id, image_id, caption}]}

One record per caption (COCO has about five per image; the image is fetched once). The
file is read twice, streaming both times: first the `images` list into an id -> file-name
map (one short entry per image), then the annotations. Images: the `file_name` under
`image_root` (else `coco_url`); an `image_template` may rewrite it, with `{image}` (the file
name) and `{image_id}`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.recipe import SourceConfig
from pipelines.sources.common import Item, MissingField, caption_messages, need, resolve_image, source_lang, to_item
from pipelines.sources.jsonstream import JsonStreamError, iter_json_array
from templates.schema import Record, make_id


def read_coco_captions(cfg: SourceConfig) -> Iterator[Item]:
    """`path` is the captions JSON; `annotations`, if given, is read instead of `path` for the
    captions (some mirrors split the two lists into two files)."""
    try:
        images = image_map(cfg)
        captions = cfg.annotations or cfg.path
        for index, row in iter_json_array(captions, key="annotations"):
            location = f"{captions}[{index}]"
            yield to_item(location, row, lambda: make_record(cfg, row, images))
    except JsonStreamError as err:
        yield Item.bad(err.location, "invalid_json", err.reason)


def image_map(cfg: SourceConfig) -> dict[int, str]:
    """image id -> what to fetch: file name (with an image_root) or the COCO URL."""
    images: dict[int, str] = {}
    for _, image in iter_json_array(cfg.path, key="images"):
        if not isinstance(image, dict) or not isinstance(image.get("id"), int):
            continue  # its captions are rejected: "image_id ... is not in the file's `images` list"
        ref = image.get("file_name") if cfg.image_root or not image.get("coco_url") else image["coco_url"]
        if isinstance(ref, str) and ref:
            images[image["id"]] = ref
    return images


def make_record(cfg: SourceConfig, row: dict, images: dict[int, str]) -> Record:
    image_id = need(row, "image_id", int)
    if image_id in images:
        image = resolve_image(cfg, images[image_id], image_id=image_id)
    elif cfg.image_template:
        image = resolve_image(cfg, image_id=image_id)
    else:
        raise MissingField(f"image_id {image_id} is not in the file's `images` list")
    return Record(
        id=make_id(cfg.name, need(row, "id", (int, str))),
        source=cfg.name,
        task="caption",
        messages=caption_messages(need(row, "caption").strip()),
        image=image,
        lang=source_lang(cfg),
        meta={"image_id": image_id, "annotation_id": row["id"]},
    )
