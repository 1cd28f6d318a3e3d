"""GQA: one JSON object keyed by question id, streamed pair by pair (files reach 1.4 GB).

    {"201307251": {"imageId": "2354786", "question": "...", "answer": "yes",
                   "fullAnswer": "Yes, it is.", "types": {...}, ...}, ...}

The record answers with the short `answer` (what GQA scores); `fullAnswer` stays in `meta`.
Images: `image_template` (default "{image_id}.jpg") under `image_root`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.recipe import SourceConfig
from pipelines.sources.common import Item, need, qa_messages, resolve_image, source_lang, to_item
from pipelines.sources.jsonstream import JsonStreamError, iter_json_object
from templates.schema import Record, make_id

DEFAULT_TEMPLATE = "{image_id}.jpg"
META_FIELDS = ("fullAnswer", "types", "semantic", "isBalanced", "groups", "equivalent")


def read_gqa(cfg: SourceConfig) -> Iterator[Item]:
    try:
        for qid, row in iter_json_object(cfg.path):
            location = f"{cfg.path}[{qid!r}]"
            yield to_item(location, row, lambda: make_record(cfg, qid, row))
    except JsonStreamError as err:
        yield Item.bad(err.location, "invalid_json", err.reason)


def make_record(cfg: SourceConfig, qid: str, row: dict) -> Record:
    image_id = need(row, "imageId", (str, int))
    return Record(
        id=make_id(cfg.name, qid),
        source=cfg.name,
        task="vqa",
        messages=qa_messages(need(row, "question"), need(row, "answer")),
        image=resolve_image(cfg, template=cfg.image_template or DEFAULT_TEMPLATE, image_id=image_id),
        lang=source_lang(cfg),
        meta={"question_id": qid, "image_id": image_id, **{k: row[k] for k in META_FIELDS if k in row}},
    )
