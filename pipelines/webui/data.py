"""The data tab's reading of a run's rendered shards, one row group at a time.

    shards = ShardSet(Path("runs/demo/render"))
    page = shards.page(Filters(source="shapes-vqa", text="红色"), number=0, size=10)

Only Parquet metadata is read up front (row counts and the min/max statistics the render step
writes for `source`, `task` and `stage`). A page then reads:

- without filters: nothing but the row groups its rows are in (positions follow from the counts);
- with filters: row group by row group, only the columns the filters need (`source`, `task`, the
  texts for a search), skipping groups whose statistics exclude the value, until the page is full
  and one more match says whether a next page exists; then the full rows of just the groups that
  hold the page's rows.

So a page costs the same on a 20-row shard set and a 20-million-row one, except that a filter that
matches little reads more light columns to fill it. Memory holds one row group at a time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

FILTER_STATS = ("source", "task")
SEARCHED = ("turns", "messages", "messages_en")
"""Columns a text search looks in: the rendered turns, the instructions, the English original."""


@dataclass(frozen=True)
class Filters:
    subset: str | None = None
    """`<stage>/<split>` (the shard folder: `sft/train`), or None for all."""
    source: str | None = None
    task: str | None = None
    text: str = ""
    """Case-insensitive substring of any searched text."""

    @property
    def reads_columns(self) -> bool:
        return bool(self.source or self.task or self.text.strip())


@dataclass(frozen=True)
class RowGroup:
    file: Path
    subset: str
    index: int
    rows: int
    stats: dict[str, tuple[str, str]]
    """(min, max) of the FILTER_STATS columns whose statistics the file has."""

    def may_hold(self, filters: Filters) -> bool:
        """False when the subset differs or the statistics rule the source or task out."""
        if filters.subset and filters.subset != self.subset:
            return False
        for column in FILTER_STATS:
            value, bounds = getattr(filters, column), self.stats.get(column)
            if value and bounds and not bounds[0] <= value <= bounds[1]:
                return False
        return True


@dataclass
class Page:
    number: int
    rows: list[dict[str, Any]]
    """Full rows (all columns), each with `_subset` added."""
    total: int | None
    """Matching rows in all; None when the scan stopped once the page was full."""
    has_next: bool


def _stats(meta: pq.RowGroupMetaData, names: list[str]) -> dict[str, tuple[str, str]]:
    out = {}
    for column in FILTER_STATS:
        if column not in names:
            continue
        chunk = meta.column(names.index(column))
        s = chunk.statistics if chunk.is_stats_set else None
        if s is not None and s.has_min_max:
            out[column] = (_text(s.min), _text(s.max))
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def row_groups(render_dir: Path) -> list[RowGroup]:
    """Every row group of `render_dir/data/<stage>/<split>/*.parquet`, in file order, from metadata."""
    groups = []
    for file in sorted(Path(render_dir, "data").glob("*/*/*.parquet")):
        subset = f"{file.parent.parent.name}/{file.parent.name}"
        meta = pq.ParquetFile(file).metadata
        names = [meta.schema.column(i).path for i in range(meta.num_columns)]
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            groups.append(RowGroup(file, subset, i, rg.num_rows, _stats(rg, names)))
    return groups


def _strings(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """All strings of a `turns` / `messages` column, flat, with the row each belongs to."""
    column = column.combine_chunks()
    parents = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
    items = pc.list_flatten(column)
    fields = [f.name for f in items.type] if pa.types.is_struct(items.type) else []
    texts = [pc.struct_field(items, [k]) for k, name in enumerate(fields) if name != "role"]
    if not texts:
        return pa.array([], pa.string()), np.zeros(0, dtype=np.int64)
    return pa.concat_arrays(texts), np.concatenate([parents] * len(texts))


def matching(table: pa.Table, filters: Filters) -> np.ndarray:
    """Indices of the rows of `table` (the light columns of one row group) that pass the filters."""
    keep = np.ones(table.num_rows, dtype=bool)
    for column in FILTER_STATS:
        value = getattr(filters, column)
        if value:
            keep &= pc.fill_null(pc.equal(table.column(column), value), False).to_numpy(zero_copy_only=False)
    text = filters.text.strip()
    if text:
        found = np.zeros(table.num_rows, dtype=bool)
        for column in SEARCHED:
            strings, parents = _strings(table.column(column))
            hits = pc.fill_null(pc.match_substring(strings, text, ignore_case=True), False)
            found[parents[hits.to_numpy(zero_copy_only=False)]] = True
        keep &= found
    return np.flatnonzero(keep)


class ShardSet:
    """The rendered shards of one run (`<run>/render`), read page by page."""

    def __init__(self, render_dir: Path) -> None:
        self.render_dir = Path(render_dir)
        self.groups = row_groups(self.render_dir)

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups)

    def subsets(self) -> list[str]:
        return sorted({g.subset for g in self.groups})

    def choices(self, column: str) -> list[str]:
        """The values of `source` or `task`: from the render manifest, else read from the shards."""
        manifest = self.render_dir / "manifest.json"
        if manifest.is_file():
            counts = json.loads(manifest.read_text(encoding="utf-8")).get("counts", {})
            if f"by_{column}" in counts:
                return sorted(counts[f"by_{column}"])
        values: set[str] = set()
        for g in self.groups:
            table = pq.ParquetFile(g.file).read_row_group(g.index, columns=[column])
            values.update(v for v in pc.unique(table.column(column)).to_pylist() if v is not None)
        return sorted(values)

    def _hits(self, filters: Filters) -> Iterator[tuple[RowGroup, np.ndarray]]:
        """(row group, indices of its matching rows), in order; only light columns are read."""
        columns = [*FILTER_STATS, *SEARCHED] if filters.text.strip() else list(FILTER_STATS)
        for g in self.groups:
            if not g.may_hold(filters):
                continue
            if not filters.reads_columns:
                yield g, np.arange(g.rows)
                continue
            light = pq.ParquetFile(g.file).read_row_group(g.index, columns=columns)
            hits = matching(light, filters)
            if len(hits):
                yield g, hits

    def page(self, filters: Filters, number: int, size: int) -> Page:
        """Rows `number * size` to `(number + 1) * size - 1` of those that pass `filters`."""
        number, size = max(0, int(number)), max(1, int(size))
        start, end = number * size, (number + 1) * size
        seen, picked, has_next = 0, [], False
        for g, hits in self._hits(filters):
            lo, hi = max(start - seen, 0), min(end - seen, len(hits))
            if lo < hi:
                picked.append((g, hits[lo:hi]))
            seen += len(hits)
            if seen > end and filters.reads_columns:
                has_next = True
                break
        else:
            has_next = seen > end
        total = None if has_next and filters.reads_columns else seen
        return Page(number, [row for g, idx in picked for row in self._full_rows(g, idx)], total, has_next)

    @staticmethod
    def _full_rows(group: RowGroup, indices: np.ndarray) -> list[dict[str, Any]]:
        table = pq.ParquetFile(group.file).read_row_group(group.index).take(pa.array(indices))
        return [{**row, "_subset": group.subset} for row in table.to_pylist()]
