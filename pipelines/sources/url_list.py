"""img2dataset-style URL lists (CC3M, LAION, Wukong): parquet, csv, tsv or jsonl, streamed.

Each row becomes a caption record: the image is the row's URL (`url_col`), the caption
its `caption_col`; every other column lands in `meta` for lineage. A folder is read file by
file in name order. `zh_pairs` uses this reader with `lang="zh"` so translation skips it.

CSV/TSV: one line is one row. A CSV value may be quoted (to hold a comma; '""' inside is a
quote), but never spans lines, as in img2dataset's own reader, so a stray quote cannot swallow
the lines after it. TSV has no quoting (CC3M, CC12M and LAION ship raw TSV): a caption's quotes
are kept as they are. The first line is the header when it names url_col, caption_col or
id_col. Files without one (CC3M: `caption<TAB>url`, CC12M: `url<TAB>caption`) are read with
the recipe's `columns:`; without it, a first line of two values of which one is a URL is taken
as data, its columns named [url, caption] or [caption, url] by where the URL is (printed). Any
other first line rejects every line with `unknown_columns`, saying what to set. Every line is
a kept record or a rejection: read == kept + rejected.
"""

from __future__ import annotations

import csv
import math
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from common.image_refs import ImageRefError
from pipelines.recipe import RecipeError, SourceConfig
from pipelines.sources.common import (
    Item,
    caption_messages,
    content_id,
    deep_item,
    resolve_image,
    source_lang,
)
from pipelines.sources.jsonstream import BOM, JsonStreamError, iter_json_lines, open_text
from templates.schema import Record, make_id

LIST_FORMATS = ("parquet", "csv", "tsv", "jsonl", "csv.gz", "tsv.gz", "jsonl.gz")
PARQUET_BATCH_ROWS = 8192
URL_LIKE = re.compile(r"\s*(https?|file)://", re.IGNORECASE)


class RowError(ValueError):
    """A line that is not a row of the table; `reason` is the rejection reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def read_url_list(cfg: SourceConfig) -> Iterator[Item]:
    return _read(cfg, lang=source_lang(cfg, "en"))


def read_zh_pairs(cfg: SourceConfig) -> Iterator[Item]:
    """Image-text pairs already in Chinese: the same tables, `lang` defaults to "zh"."""
    return _read(cfg, lang=source_lang(cfg, "zh"))


def _read(cfg: SourceConfig, lang: str) -> Iterator[Item]:
    for path in list_files(Path(cfg.path)):
        for location, row in iter_rows(path, cfg):
            if isinstance(row, JsonStreamError):
                yield Item.bad(location, "invalid_json", row.reason)
            elif isinstance(row, RowError):
                yield Item.bad(location, row.reason, str(row))
            elif isinstance(row, Exception):
                yield Item.bad(location, "invalid_row", str(row))
            else:
                yield deep_item(location, row) or row_to_item(cfg, row, location, lang=lang)


def list_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if file_format(p) in LIST_FORMATS)
        if not files:
            raise FileNotFoundError(f"{path}: no URL-list files in this folder (looked for *.{', *.'.join(LIST_FORMATS)})")
        return files
    if file_format(path) not in LIST_FORMATS:
        raise ValueError(f"{path}: unknown URL-list format (expected one of: {', '.join(LIST_FORMATS)})")
    return [path]


def file_format(path: Path) -> str:
    suffixes = path.suffixes[-2:]
    joined = "".join(suffixes).lstrip(".")
    return joined if joined.endswith(".gz") else path.suffix.lstrip(".")


def iter_rows(path: Path, cfg: SourceConfig) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """(location, row) per data row; rows are plain dicts. Never loads the whole file."""
    fmt = file_format(path)
    if cfg.columns is not None and not fmt.startswith(("csv", "tsv")):
        raise RecipeError(f"source {cfg.name!r}: `columns:` names the columns of a CSV/TSV file without a header "
                          f"row; {path} is {fmt}, which names its own: remove `columns:` (use url_col/caption_col)")
    if fmt == "parquet":
        yield from _parquet_rows(path)
    elif fmt.startswith(("csv", "tsv")):
        yield from _csv_rows(path, cfg, delimiter="\t" if fmt.startswith("tsv") else ",")
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


def _csv_rows(path: Path, cfg: SourceConfig, delimiter: str) -> Iterator[tuple[str, dict[str, Any] | Exception]]:
    """(location, row or RowError) per non-blank line; the header line, if any, is not a row."""
    layout = Layout(names=list(cfg.columns)) if cfg.columns else None
    first = True
    with open_text(path) as f:
        for lineno, fields in _csv_lines(f, delimiter):
            location = f"{path}:{lineno}"
            if isinstance(fields, RowError):
                yield location, fields
                continue
            is_first, first = first, False
            if layout is None:
                layout = detect_layout(fields, cfg, path)
                if layout.header:
                    continue
            elif is_first and cfg.columns and {cfg.url_col, cfg.caption_col} <= set(fields):
                yield location, RowError("header_row", f"line {lineno} names the columns {fields[:20]}, but `columns:` "
                                                       f"of source {cfg.name!r} says the file has no header row: "
                                                       "remove `columns:` to read it as the header")
                continue
            yield location, layout.row(fields, delimiter)


def _csv_lines(f: IO[str], delimiter: str) -> Iterator[tuple[int, list[str] | RowError]]:
    """(line number, values) of each non-blank line, parsed on its own."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    for lineno, line in enumerate(f, start=1):
        line = line.rstrip("\r\n").lstrip(BOM)  # a BOM mid-file: files with one concatenated
        if not line.strip():
            continue
        try:
            yield lineno, next(csv.reader((line,), delimiter=delimiter, quoting=quoting, strict=True))
        except csv.Error as err:
            yield lineno, RowError("invalid_row", f"not a CSV line ({err}): {_csv_hint(err)}")


def _csv_hint(err: csv.Error) -> str:
    if "field limit" in str(err):
        return f"a value is over {csv.field_size_limit():,} characters"
    return "a value that starts with '\"' must end with '\"' before the next ',' and double the quotes inside it"


@dataclass(frozen=True)
class Layout:
    """How a CSV/TSV file's lines map to columns: `names` in order, whether line 1 is the
    header, or the `problem` every line is rejected with when neither can be told."""

    names: list[str] | None = None
    header: bool = False
    problem: str | None = None

    def row(self, fields: list[str], delimiter: str) -> dict[str, Any] | RowError:
        if self.problem is not None or self.names is None:
            return RowError("unknown_columns", self.problem or "no column names")
        if len(fields) > len(self.names):
            return RowError("invalid_row", f"{len(fields)} values but {len(self.names)} columns {self.names}: "
                                           f"a value holding an unquoted {delimiter!r}?")
        return {name: fields[i] if i < len(fields) else None for i, name in enumerate(self.names)}


def detect_layout(first: list[str], cfg: SourceConfig, path: Path) -> Layout:
    """The layout of a file whose first line is `first`, for a source without `columns:`."""
    wanted = {cfg.url_col, cfg.caption_col} | ({cfg.id_col} if cfg.id_col else set())
    if wanted & set(first):
        return Layout(names=first, header=True)
    urls = [i for i, value in enumerate(first) if URL_LIKE.match(value)]
    if len(first) == 2 and len(urls) == 1:
        names = [cfg.url_col, cfg.caption_col] if urls[0] == 0 else [cfg.caption_col, cfg.url_col]
        print(f"[read] {path}: no header row (line 1 is data: it holds a URL); reading its columns as {names}. "
              f"Set `columns:` on source {cfg.name!r} to name them yourself", file=sys.stderr)
        return Layout(names=names)
    to_do = (f"set `columns:` on source {cfg.name!r} to the file's column names in order, e.g. [caption, url] "
             "(CC3M) or [url, caption] (CC12M)")
    if urls:
        return Layout(problem=f"{path} has no header row (line 1 holds the URL {first[urls[0]][:200]!r}) and "
                              f"{len(first)} columns: {to_do}")
    return Layout(problem=f"line 1 of {path}, read as the header, names neither url_col {cfg.url_col!r} nor "
                          f"caption_col {cfg.caption_col!r} (it holds {[v[:50] for v in first[:20]]}): set url_col and "
                          f"caption_col to the header's names or, if the file has no header row, {to_do}")


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
    except ImageRefError as err:
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
