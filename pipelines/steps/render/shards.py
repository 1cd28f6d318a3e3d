"""Shard writing with bounded memory: a seeded external shuffle, then rolling Parquet shards.

Rows arrive in input order, each carrying a 64-bit shuffle key (a seeded hash of its id).
`BucketSpill` appends them to bucket files by key range (Arrow IPC, so a later pass can read a
few columns through a memory map without touching image bytes); `bucket_files` splits a bucket
that came out too big; `sorted_bucket` loads one bucket sorted by key. Visiting buckets in order
gives every row in global key order: a seeded shuffle that never holds more than one bucket,
gives the same order for the same ids whatever the input order or bucket count, and puts
duplicate ids next to each other (same id, same key) for dedup.

`ShardWriter` cuts row groups at a row or byte limit (whichever first, decided row by row, so
the cut does not depend on how the rows were chunked) and rolls to a new file past a target
size. Files get their final ``-NNNNN-of-MMMMM`` names only when the count is known (`finalize`).
Dictionary encoding stays on for every column: it also stores an image that several rows of
one row group share (VQA questions about one picture) once.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.files import rename_into_place, sha256_file
from common.storage import storage_guard

KEY = "_key"
ORDER = "_order"
SORT_COLUMNS = (KEY, "id", ORDER)
KEY_SPACE = 1 << 64
MAX_SPLIT_DEPTH = 4
SPLIT_FANOUT = 16
ROW_OVERHEAD_BYTES = 1024
"""Text share of a row in the row-group byte estimate (images dominate; exactness is not needed)."""
STATISTICS_COLUMNS = ["id", "source", "task", "stage"]


class BucketSpill:
    """Appends rows to `n` bucket files covering the key range [lo, hi) in equal parts.

    Rows are buffered as Python dicts and written as one record batch per bucket when the
    buffers together exceed `buffer_bytes`, so memory is bounded by that, not by the input.
    """

    def __init__(
        self, folder: Path, schema: pa.Schema, n: int, *, lo: int = 0, hi: int = KEY_SPACE,
        buffer_bytes: int = 16 << 20, name: str = "bucket",
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.schema, self.n, self.lo, self.hi = schema, n, lo, hi
        self.paths = [folder / f"{name}-{i:05d}.arrow" for i in range(n)]
        self._writers: list[pa.ipc.RecordBatchFileWriter | None] = [None] * n
        self._rows: list[list[dict]] = [[] for _ in range(n)]
        self._buffered = 0
        self.buffer_bytes = buffer_bytes

    def bucket_of(self, key: int) -> int:
        return (key - self.lo) * self.n // (self.hi - self.lo)

    def add(self, row: dict, size: int) -> None:
        self._rows[self.bucket_of(row[KEY])].append(row)
        self._buffered += size
        if self._buffered >= self.buffer_bytes:
            self.flush()

    def add_batch(self, batch: pa.RecordBatch) -> None:
        """Route an Arrow batch (used when splitting a bucket further)."""
        keys = batch.column(KEY).to_numpy().astype(object)  # Python ints: no uint64 overflow
        buckets = ((keys - self.lo) * self.n // (self.hi - self.lo)).astype(np.int64)
        for b in np.unique(buckets):
            self._write(int(b), batch.filter(pa.array(buckets == b)))

    def flush(self) -> None:
        for b, rows in enumerate(self._rows):
            if rows:
                self._write(b, pa.RecordBatch.from_pylist(rows, schema=self.schema))
                self._rows[b] = []
        self._buffered = 0

    def _write(self, b: int, batch: pa.RecordBatch) -> None:
        with storage_guard(self.paths[b]):
            if self._writers[b] is None:
                self._writers[b] = pa.ipc.new_file(str(self.paths[b]), self.schema)
            self._writers[b].write_batch(batch)

    def close(self) -> list[tuple[Path, int, int]]:
        """Flush and close; returns (path, lo, hi) of every non-empty bucket, in key order."""
        self.flush()
        out = []
        width = self.hi - self.lo
        for b, writer in enumerate(self._writers):
            if writer is not None:
                with storage_guard(self.paths[b]):
                    writer.close()
                out.append((self.paths[b], self.lo + width * b // self.n, self.lo + width * (b + 1) // self.n))
        return out


def bucket_files(buckets: list[tuple[Path, int, int]], max_bytes: int, depth: int = 0) -> Iterator[Path]:
    """The bucket files in key order, splitting any bigger than `max_bytes` by finer key ranges."""
    for path, lo, hi in buckets:
        if path.stat().st_size <= max_bytes or depth >= MAX_SPLIT_DEPTH or hi - lo < SPLIT_FANOUT:
            yield path
            continue
        schema, reader = _open(path)
        spill = BucketSpill(path.parent, schema, SPLIT_FANOUT, lo=lo, hi=hi, name=path.stem)
        for i in range(reader.num_record_batches):
            spill.add_batch(reader.get_batch(i))
        parts = spill.close()
        path.unlink()
        yield from bucket_files(parts, max_bytes, depth + 1)


def _open(path: Path) -> tuple[pa.Schema, pa.ipc.RecordBatchFileReader]:
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    return reader.schema, reader


def read_bucket(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A bucket as one chunk (take() on one chunk is far faster than on many); `columns` are read
    through the memory map without touching the others (the image bytes)."""
    _, reader = _open(path)
    table = reader.read_all()
    if columns is not None:
        table = table.select(sorted({*columns, *SORT_COLUMNS}, key=table.schema.names.index))
    return table.combine_chunks()


def sort_order(table: pa.Table) -> pa.Array:
    """Indices that put a bucket in key order; equal keys by id (a 64-bit collision stays
    harmless), then input order (the first occurrence of a duplicated id comes first)."""
    return pc.sort_indices(table, sort_keys=[(c, "ascending") for c in SORT_COLUMNS])


def sorted_bucket(path: Path, columns: list[str] | None = None) -> pa.Table:
    table = read_bucket(path, columns)
    return table.take(sort_order(table))


def first_of_each_id(table: pa.Table) -> np.ndarray:
    """Mask of rows that are the first occurrence of their id (the table must be key-sorted)."""
    ids = table.column("id").to_numpy(zero_copy_only=False)
    keep = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        keep[1:] = ids[1:] != ids[:-1]
    return keep


@dataclass
class ShardFile:
    path: Path
    rows: int
    bytes: int = 0
    sha256: str = ""


class ShardWriter:
    """Writes one (config, split) stream of rows into Parquet files of about `shard_bytes` each."""

    def __init__(
        self, folder: Path, prefix: str, schema: pa.Schema, *, shard_bytes: int,
        row_group_rows: int, row_group_bytes: int = 64 << 20,
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.prefix, self.schema = folder, prefix, schema
        self.shard_bytes, self.row_group_rows, self.row_group_bytes = shard_bytes, row_group_rows, row_group_bytes
        self.files: list[ShardFile] = []
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._buffered_bytes = 0
        self._sink: pa.NativeFile | None = None
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if not len(table):
            return
        table = table.select(self.schema.names).cast(self.schema)
        self._buffer.append(table)
        self._buffered_rows += len(table)
        self._buffered_bytes += int(_row_sizes(table).sum())
        while self._buffered_rows >= self.row_group_rows or self._buffered_bytes >= self.row_group_bytes:
            self._write_row_group()
        if self._buffer:  # copy the remainder so it does not pin the caller's (bucket-sized) buffers
            rest = pa.concat_tables(self._buffer)
            self._buffer = [rest.take(pa.array(np.arange(len(rest))))]

    def close(self) -> list[ShardFile]:
        while self._buffered_rows:
            self._write_row_group()
        self._close_file()
        return self.files

    def _write_row_group(self) -> None:
        table = pa.concat_tables(self._buffer)
        sizes = np.cumsum(_row_sizes(table))
        n = min(self.row_group_rows, int(np.searchsorted(sizes, self.row_group_bytes)) + 1, len(table))
        group, rest = table.slice(0, n), table.slice(n)
        self._buffer = [rest] if len(rest) else []
        self._buffered_rows = len(rest)
        self._buffered_bytes = int(sizes[-1] - sizes[n - 1])
        if self._writer is None:
            self._open_file()
        with storage_guard(self.files[-1].path):
            self._writer.write_table(group, row_group_size=n)
        self.files[-1].rows += n
        if self._sink.tell() >= self.shard_bytes:
            self._close_file()

    def _open_file(self) -> None:
        path = self.folder / f"{self.prefix}-{len(self.files):05d}.parquet.part"
        with storage_guard(path):
            self._sink = pa.OSFile(str(path), "wb")
        self._writer = pq.ParquetWriter(
            self._sink, self.schema, compression="zstd", write_statistics=STATISTICS_COLUMNS,
        )
        self.files.append(ShardFile(path=path, rows=0))

    def _close_file(self) -> None:
        if self._writer is not None:
            with storage_guard(self.files[-1].path):
                self._writer.close()
                self._sink.close()
            self._writer = self._sink = None


def _row_sizes(table: pa.Table) -> np.ndarray:
    image_bytes = pc.binary_length(pc.struct_field(table.column("image"), "bytes"))
    sizes = pc.fill_null(image_bytes, 0).to_numpy().astype(np.int64) + ROW_OVERHEAD_BYTES
    if "images" in table.column_names:  # the images of rows with several
        many = table.column("images").combine_chunks()
        flat = pc.fill_null(pc.binary_length(pc.struct_field(pc.list_flatten(many), "bytes")), 0).to_numpy()
        sizes += np.bincount(pc.list_parent_indices(many).to_numpy(), weights=flat, minlength=len(table)).astype(np.int64)
    return sizes


def finalize(files: list[ShardFile], dest: Path, prefix: str) -> list[ShardFile]:
    """Move finished files to ``dest/<prefix>-NNNNN-of-MMMMM.parquet`` (each move is atomic)."""
    if files:
        dest.mkdir(parents=True, exist_ok=True)
    out = []
    for i, f in enumerate(files):
        target = dest / f"{prefix}-{i:05d}-of-{len(files):05d}.parquet"
        with storage_guard(target):
            rename_into_place(f.path, target)  # fsynced first
        out.append(ShardFile(path=target, rows=f.rows, bytes=target.stat().st_size, sha256=sha256_file(target)))
    return out


def remove_tree(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path)
