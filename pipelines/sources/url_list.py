"""img2dataset-style URL lists (CC3M, LAION, Wukong): parquet, csv, tsv or jsonl, streamed.

Each row becomes a caption record: the image is the row's URL (`url_col`), the caption
its `caption_col`; every other column lands in `meta` for lineage. A folder is read file by
file in name order. `zh_pairs` uses this reader with `lang="zh"` so translation skips it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.recipe import SourceConfig
from pipelines.sources.common import (
    BadImageRef, Item, caption_messages, content_id, deep_item, resolve_image, source_lang,
)
from pipelines.sources.jsonstream import JsonStreamError, iter_json_lines, open_text
from templates.schema import Record, make_id

FORMATS = ("parquet", "csv", "tsv", "jsonl", "csv.gz", "tsv.gz", "jsonl.gz")
PARQUET_BATCH_ROWS = 8192


def read_url_list(cfg: SourceConfig) -> Iterator[Item]:
    return _read(cfg, lang=source_lang(cfg, "en"))


def read_zh_pairs(cfg: SourceConfig) -> Iterator[Item]:
    """Image-text pairs already in Chinese: the same tables, `lang` defaults to "zh"."""
    return _read(cfg, lang=source_lang(cfg, "zh"))


def _read(cfg: SourceConfig, lang: str) -> Iterator[Item]:
    for path in list_files(Path(cfg.path)):
        for location, row in iter_rows(path):
            if isinstance(row, JsonStreamError):
                yield Item.bad(location, "invalid_json", row.reason)
            elif isinstance(row, Exception):
                yield Item.bad(location, "invalid_row", str(row))
            else:
                yield deep_item(location, row) or row_to_item(cfg, row, location, lang=lang)


def list_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if file_format(p) in FORMATS)
        if not files:
            raise FileNotFoundError(f"{path}: no URL-list files in this folder (looked for *.{', *.'.join(FORMATS)})")
        return files
    if file_format(path) not in FORMATS:
        raise ValueError(f"{path}: unknown URL-list format (expected one of: {', '.join(FORMATS)})")
    return [path]


def file_format(path: Path) -> str:
    suffixes = path.suffixes[-2:]
    joined = "".join(suffixes).lstrip(".")
    return joined if joined.endswith(".gz") else path.suffix.lstrip(".")


def iter_rows(path: Path) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """(location, row) per data row; rows are plain dicts. Never loads the whole file."""
    fmt = file_format(path)
    if fmt == "parquet":
        yield from _parquet_rows(path)
    elif fmt.startswith(("csv", "tsv")):
        yield from _csv_rows(path, delimiter="\t" if fmt.startswith("tsv") else ",")
    else:
        for lineno, value in iter_json_lines(path):
            yield f"{path}:{lineno}", value if isinstance(value, (dict, JsonStreamError)) else ValueError(
                f"expected a JSON object per line, got {type(value).__name__}"
            )


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    index = 0
    with pq.ParquetFile(path) as f:
        for batch in f.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                yield f"{path}[{index}]", row
                index += 1


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[str, dict[str, Any]]]:
    with open_text(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def row_to_item(cfg: SourceConfig, row: dict[str, Any], location: str, lang: str) -> Item:
    url, caption = row.get(cfg.url_col), row.get(cfg.caption_col)
    for col, value in ((cfg.url_col, url), (cfg.caption_col, caption)):
        if _missing(value):
            return Item.bad(location, "missing_field", f"column {col!r} is missing or empty", raw=row)
        if not isinstance(value, str):
            return Item.bad(location, "missing_field", f"column {col!r} is a {type(value).__name__}, expected text", raw=row)
    original_id = row.get(cfg.id_col) if cfg.id_col else None
    if cfg.id_col and _missing(original_id):
        return Item.bad(location, "missing_field", f"id column {cfg.id_col!r} is missing or empty", raw=row)
    if original_id is None:
        original_id = content_id(url, caption)
    meta = {k: _plain(v) for k, v in row.items() if k not in (cfg.url_col, cfg.caption_col)}
    try:
        image = resolve_image(cfg, url)
    except BadImageRef as err:
        return Item.bad(location, err.reason, str(err), raw=row)
    record = Record(
        id=make_id(cfg.name, original_id),
        source=cfg.name,
        task="caption",
        messages=caption_messages(caption),
        image=image,
        lang=lang,
        meta=meta,
    )
    return Item(location=location, record=record)


def _missing(value: Any) -> bool:
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _plain(value: Any) -> Any:
    """JSON-friendly meta values (parquet may give bytes, dates, NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return str(value)
