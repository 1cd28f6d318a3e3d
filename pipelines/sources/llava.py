"""LLaVA JSON: instruct-150K and its parts, and the pre-training files.

    [{"id": "000000033471", "image": "000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}, ...]

Covers llava_instruct_150k.json (= conversation_58k + detail_23k + complex_reasoning_77k),
the pre-training chat.json (CC3M-595K) and blip_laion_cc_sbu_558k.json, and the v1.5 mix
(text-only items have no `image`). `image` may be a string or a list: several images in the
LLaVA-Interleave layout, their `<image>` markers anywhere in the human turns, one per image
(validation checks the count). The file is a single JSON array and is streamed item by item.

Task: `text` without an image; `caption` for a single exchange whose instruction is one of
LLaVA's brief-description prompts (the pre-training files); else `conversation`. The
recipe's `task` overrides this.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from pipelines.recipe import SourceConfig
from pipelines.sources.common import Item, need, resolve_images, source_images, source_lang, to_item, to_messages
from pipelines.sources.jsonstream import JsonStreamError, iter_json_array
from templates.schema import IMAGE_PLACEHOLDER, Record, make_id

CAPTION_PROMPTS = frozenset({
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.",
    "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.",
    "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.",
    "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.",
    "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.",
})
PARTS = {"conversation": "conversation", "detail": "detail", "complex_reasoning": "complex_reasoning",
         "chat": "pretrain", "558k": "pretrain", "pretrain": "pretrain"}


def read_llava(cfg: SourceConfig) -> Iterator[Item]:
    part = guess_part(Path(cfg.path).name)
    try:
        for index, row in iter_json_array(cfg.path):
            location = f"{cfg.path}[{index}]"
            yield to_item(location, row, lambda: make_record(cfg, row, part))
    except JsonStreamError as err:
        yield Item.bad(err.location, "invalid_json", err.reason)


def guess_part(file_name: str) -> str | None:
    name = file_name.lower()
    return next((part for key, part in PARTS.items() if key in name), None)


def make_record(cfg: SourceConfig, row: dict, part: str | None) -> Record:
    original_id = need(row, "id", (str, int))
    messages, system = to_messages(need(row, "conversations", list), "from", "value")
    image = source_images(row.get("image"))
    meta = {"original_id": original_id}
    if part:
        meta["part"] = part
    if system is not None:
        meta["system"] = system
    return Record(
        id=make_id(cfg.name, original_id),
        source=cfg.name,
        task=cfg.task or infer_task(messages, image),
        messages=messages,
        image=resolve_images(cfg, image),
        lang=source_lang(cfg),
        meta=meta,
    )


def infer_task(messages: list, image: str | list[str] | None) -> str:
    if image is None:
        return "text"
    if len(messages) == 2 and isinstance(image, str):
        prompt = re.sub(r"\s+", " ", messages[0]["content"].replace(IMAGE_PLACEHOLDER, "")).strip()
        if prompt in CAPTION_PROMPTS:
            return "caption"
    return "conversation"
