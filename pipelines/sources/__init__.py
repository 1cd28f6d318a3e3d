"""Source readers: one module per format, all yielding the one `Record` type.

    from pipelines.sources import read_source
    for record in read_source(cfg, rejects):   # validated, deduplicated, limited
        ...

A reader is `read_<kind>(cfg: SourceConfig) -> Iterator[Item]`; it streams its files and
never raises for bad data: what it cannot turn into a record comes out as an `Item` with a
reason. `read_source` validates what the reader made (`validation.py`), drops duplicate ids
and sends every rejection, with its file and line or index, to the `RejectWriter`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats
from pipelines.recipe import SOURCE_KINDS, SourceConfig
from pipelines.sources.alpaca import read_alpaca
from pipelines.sources.coco import read_coco_captions
from pipelines.sources.common import Item
from pipelines.sources.gqa import read_gqa
from pipelines.sources.llava import read_llava
from pipelines.sources.sharegpt import read_sharegpt
from pipelines.sources.textvqa import read_textvqa
from pipelines.sources.url_list import read_url_list, read_zh_pairs
from pipelines.sources.validation import legacy_encoding, legacy_encoding_hint, validate
from pipelines.sources.vqav2 import read_vqav2
from templates.schema import Record

Reader = Callable[[SourceConfig], Iterator[Item]]

READERS: dict[str, Reader] = {
    "url_list": read_url_list,
    "coco_captions": read_coco_captions,
    "vqav2": read_vqav2,
    "gqa": read_gqa,
    "textvqa": read_textvqa,
    "llava": read_llava,
    "sharegpt": read_sharegpt,
    "alpaca": read_alpaca,
    "zh_pairs": read_zh_pairs,
}
assert set(READERS) == set(SOURCE_KINDS), "every SourceConfig.kind needs a reader"

__all__ = ["READERS", "Item", "read_items", "read_located", "read_source"]


def read_items(cfg: SourceConfig) -> Iterator[Item]:
    """The reader's raw items for `cfg`, before validation (at most `cfg.limit` of them)."""
    items = READERS[cfg.kind](cfg)
    for n, item in enumerate(items):
        if cfg.limit is not None and n >= cfg.limit:
            return
        yield item


def read_source(cfg: SourceConfig, rejects: RejectWriter | None = None, stats: StepStats | None = None) -> Iterator[Record]:
    """Valid, unique records of one source. Everything else goes to `rejects`."""
    for _, record in read_located(cfg, rejects, stats):
        yield record


def read_located(
    cfg: SourceConfig, rejects: RejectWriter | None = None, stats: StepStats | None = None
) -> Iterator[tuple[str, Record]]:
    """(location, record) for the valid, unique records of one source.

    Counts `read` for every item in `stats` (the reject writer's stats by default).
    Duplicate ids are found with a set of 12-byte digests: ~60 bytes per record, so
    10 M records cost ~600 MB; shard the source beyond that."""
    stats = stats if stats is not None else (rejects.stats if rejects is not None else StepStats("read"))
    seen: set[bytes] = set()
    legacy: dict[str, str | None] = {}  # file -> the codec its first undecodable line looks like
    for item in read_items(cfg):
        stats.count_read(cfg.name)
        reason, detail, record = _check(item, seen)
        if reason == "invalid_utf8" and record is not None:
            detail = _with_encoding_hint(detail, item.location, record, legacy)
        if reason is None:
            yield item.location, record  # type: ignore[misc]
        elif rejects is not None:
            rejects.reject(
                source=cfg.name, reason=reason, detail=clean_text(detail), location=clean_text(item.location),
                record_id=record.id if record else None,
                record=clean_text(shrink(record.to_dict()) if record else _truncated(item.raw)),
            )
        else:
            stats.count_rejected(cfg.name, reason)


def _check(item: Item, seen: set[bytes]) -> tuple[str | None, str, Record | None]:
    if item.record is None:
        return item.reason or "unreadable", item.detail, None
    verdict = validate(item.record)
    if verdict is not None:
        return verdict[0], verdict[1], item.record
    digest = bytes.fromhex(item.record.id)
    if digest in seen:
        return "duplicate_id", f"id {item.record.id} was already read from this source", item.record
    seen.add(digest)
    return None, "", item.record


def _with_encoding_hint(detail: str, location: str, record: Record, legacy: dict[str, str | None]) -> str:
    """An `invalid_utf8` detail, plus what to do when the file's first undecodable line looks like a
    legacy encoding (GBK, cp1252): the whole file is, so each of its rejections says so."""
    file = _LOCATION_SUFFIX.sub("", location)
    if file not in legacy:
        legacy[file] = legacy_encoding(record)
    encoding = legacy[file]
    return f"{detail}; {legacy_encoding_hint(file, encoding)}" if encoding else detail


_LOCATION_SUFFIX = re.compile(r"(:\d+|\[\d+\]|@\d+)$")
"""How a location names its place in the file: "file:line", "file[index]", "file@offset"."""


def _truncated(raw: object) -> object:
    """Rejection rows hold the raw item when small; a huge one is cut to its repr's start."""
    text = repr(raw)
    return raw if len(text) <= 4000 else text[:4000] + "..."


def shrink(value: Any, max_chars: int = 2000, max_items: int = 100) -> Any:
    """`value` with long strings and lists cut (and saying so), for rejection rows: a record
    rejected as `field_too_long` must not put its megabytes into rejected/."""
    if isinstance(value, str) and len(value) > max_chars:
        return value[:max_chars] + f"...[cut: {len(value) - max_chars:,} more characters]"
    if isinstance(value, list):
        kept = [shrink(v, max_chars, max_items) for v in value[:max_items]]
        return kept + [f"...[cut: {len(value) - max_items:,} more items]"] if len(value) > max_items else kept
    if isinstance(value, dict):
        kept = {k: shrink(v, max_chars, max_items) for k, v in list(value.items())[:max_items]}
        return kept | {"...": f"cut: {len(value) - max_items:,} more keys"} if len(value) > max_items else kept
    return value


def clean_text(value: Any) -> Any:
    """`value` with lone surrogates (undecodable bytes) replaced by U+FFFD, so that a
    rejected record with broken text can still be written as UTF-8."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    if isinstance(value, list):
        return [clean_text(v) for v in value]
    if isinstance(value, dict):
        return {clean_text(k): clean_text(v) for k, v in value.items()}
    return value
