"""Alpaca-style text-only instructions: a JSON array or JSONL of {instruction, input, output}.

The user turn is the instruction, then the input on the next line when there is one
(Chinese-Alpaca's convention); the output is the answer. Items carry no id, so the id is a
hash of the three fields: the same instruction twice is a `duplicate_id` rejection.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.recipe import SourceConfig
from pipelines.sources.common import Item, MissingField, content_id, need, source_lang, to_item
from pipelines.sources.jsonstream import JsonStreamError, iter_json_items
from templates.schema import Record, make_id


def read_alpaca(cfg: SourceConfig) -> Iterator[Item]:
    for location, row in iter_json_items(cfg.path):
        if isinstance(row, JsonStreamError):
            yield Item.bad(row.location, "invalid_json", row.reason)
            continue
        yield to_item(location, row, lambda: make_record(cfg, row))


def make_record(cfg: SourceConfig, row: dict) -> Record:
    instruction, output = need(row, "instruction"), need(row, "output")
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise MissingField(f"field 'input' is a {type(extra).__name__}, expected str")
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    original_id = row.get("id") or content_id(instruction, extra, output)
    return Record(
        id=make_id(cfg.name, original_id),
        source=cfg.name,
        task=cfg.task or "text",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": output}],
        lang=source_lang(cfg),
        meta={"has_input": bool(extra.strip())},
    )
