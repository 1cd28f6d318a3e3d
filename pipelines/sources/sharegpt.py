"""ShareGPT-style multimodal chats (LLaMA-Factory / InternVL layout), JSON array or JSONL.

    {"id": "...", "messages": [{"role": "user", "content": "<image>Who is this?"},
                               {"role": "assistant", "content": "..."}],
     "images": ["path/or/url.jpg"]}

`conversations` with `from`/`value` (ShareGPT4V) is read as well. A leading `system` turn
goes to `meta.system`. Items without an `id` get one from a hash of their content. Several `images`
make a multi-image record (their `<image>` markers in any user turn, one per image).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipelines.recipe import SourceConfig
from pipelines.sources.common import (
    Item,
    MissingField,
    content_id,
    resolve_images,
    source_images,
    source_lang,
    to_item,
    to_messages,
)
from pipelines.sources.jsonstream import JsonStreamError, iter_json_items
from templates.schema import Record, make_id


def read_sharegpt(cfg: SourceConfig) -> Iterator[Item]:
    for location, row in iter_json_items(cfg.path):
        if isinstance(row, JsonStreamError):
            yield Item.bad(row.location, "invalid_json", row.reason)
            continue
        yield to_item(location, row, lambda: make_record(cfg, row))


def make_record(cfg: SourceConfig, row: Any) -> Record:
    if not isinstance(row, dict):
        raise MissingField(f"expected a JSON object, got {type(row).__name__}")
    if "messages" in row:
        messages, system = to_messages(row["messages"], "role", "content")
    elif "conversations" in row:
        messages, system = to_messages(row["conversations"], "from", "value")
    else:
        raise MissingField("field 'messages' (or 'conversations') is missing")
    image = source_images(row.get("images", row.get("image")))
    original_id = row.get("id") or content_id(row.get("messages") or row.get("conversations"), image)
    meta: dict[str, Any] = {"original_id": original_id}
    if system is not None:
        meta["system"] = system
    return Record(
        id=make_id(cfg.name, original_id),
        source=cfg.name,
        task=cfg.task or ("conversation" if image else "text"),
        messages=messages,
        image=resolve_images(cfg, image),
        lang=source_lang(cfg),
        meta=meta,
    )
