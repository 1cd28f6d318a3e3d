"""Tokenise once: a stage's shard rows as token ids, labels and image positions, memory-mapped Arrow.

    key = cache_key(units, tokenizer, TokenSettings("visualcla", True, 160, 10))
    folder = root / key
    build_token_cache(units, tokenizer, folder, settings, workers=2)   # skips units already there
    table = read_cached_unit(folder, unit)                            # zero-copy, memory-mapped

Training used to tokenise every row on every epoch. Here each shard unit (file, row group, slice:
`training.data.ShardUnit`) becomes one Arrow IPC file `<unit.key>.arrow` with a row per shard row:
`input_ids`, `labels` (int32 lists), `image_starts` (where each image's `<img_token>` run starts) and
`length`. A second epoch, a rerun or a second stage with the same key reads those files instead.

The folder name is a hash of everything the tokens depend on: the shards' checksums (render's
`manifest.json` sha256 when it lists the file, else the file's own), the tokenizer (its serialised
vocabulary, merges and special tokens), the template name and its EOS, the max length and the image
tokens per image; so a cache made with other settings is never read. `key.json` in the folder records
the settings. Units are written atomically (a temp name renamed into place) one at a time, each by
streaming its row group (bounded memory: one unit's rows at a time per worker), in worker processes
when `workers` > 1, with a progress bar; a killed build leaves whole units and resumes.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa

from common.files import rename_into_place, sha256_file, staging_path
from common.progress import bar
from training.data import COLUMNS, RowTooLong, ShardUnit, encode_texts, encode_turns, read_unit, segments
from templates.rows import row_images

SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                    ("image_starts", pa.list_(pa.int32())), ("length", pa.int32())])
KEY_FILE = "key.json"


@dataclass(frozen=True)
class TokenSettings:
    """What, besides the shards and the tokenizer, the tokens depend on."""

    template: str
    eos: bool
    max_length: int
    num_image_tokens: int


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's behaviour: the serialised fast tokenizer (vocabulary, merges,
    normalisation, added tokens), else the vocabulary, plus the special tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    body = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps([tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
                          sorted(tokenizer.all_special_tokens)])
    return hashlib.sha256((body + special).encode()).hexdigest()


def shard_checksums(files: list[str]) -> dict[str, str]:
    """sha256 of each shard: from render's manifest.json beside the shards when it lists the file
    (no re-hashing of a large shard set on every run), else hashed here."""
    listed: dict[str, str] = {}
    for f in {Path(f).resolve() for f in files}:
        for folder in f.parents:
            manifest = folder / "manifest.json"
            if manifest.is_file():
                listed.update(_manifest_hashes(manifest))
                break
    return {f: listed.get(str(Path(f).resolve())) or sha256_file(Path(f)) for f in files}


def _manifest_hashes(manifest: Path) -> dict[str, str]:
    try:
        files = json.loads(manifest.read_text(encoding="utf-8")).get("shards", [])
    except (OSError, ValueError, AttributeError):
        return {}
    root = manifest.parent
    return {str((root / f["path"]).resolve()): f["sha256"] for f in files
            if isinstance(f, dict) and f.get("path") and f.get("sha256")}


def cache_key(units: list[ShardUnit], tokenizer, settings: TokenSettings) -> str:
    """The cache folder's name: a hash of the shards, the tokenizer and `settings`."""
    sums = shard_checksums(sorted({u.file for u in units}))
    what = {"shards": sorted(sums.values()), "units": sorted(u.key for u in units),
            "tokenizer": tokenizer_fingerprint(tokenizer), **asdict(settings)}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:24]


def unit_path(folder: Path, unit: ShardUnit) -> Path:
    return Path(folder) / f"{unit.key}.arrow"


def build_token_cache(units: list[ShardUnit], tokenizer, folder: Path, settings: TokenSettings,
                      rank: int = 0, world: int = 1, workers: int = 1) -> dict[str, int]:
    """Tokenise this rank's units (`units[rank::world]`) not cached yet; returns {units, built, rows}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0 and not (folder / KEY_FILE).is_file():
        (folder / KEY_FILE).write_text(json.dumps({**asdict(settings), "units": len(units)}, indent=1))
    todo = [u for u in units[rank::world] if not unit_path(folder, u).is_file()]
    rows = 0
    with bar(sum(u.rows for u in todo), "tokenise", unit="row") as pb:
        if workers > 1 and len(todo) > 1:
            with ProcessPoolExecutor(min(workers, len(todo))) as pool:
                for n in pool.map(_build_unit, [(u, tokenizer, folder, settings) for u in todo]):
                    rows += n
                    pb.update(n)
        else:
            for u in todo:
                n = _build_unit((u, tokenizer, folder, settings))
                rows += n
                pb.update(n)
    return {"units": len(units[rank::world]), "built": len(todo), "rows": rows}


def _build_unit(job: tuple[ShardUnit, object, Path, TokenSettings]) -> int:
    """One unit -> `<unit.key>.arrow`, written under a temp name and renamed when complete."""
    unit, tokenizer, folder, s = job
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    rows = read_unit(unit, COLUMNS)
    known = encode_texts(tokenizer, [t for row in rows for t in _texts(row, s.num_image_tokens)])
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for row in rows:
        enc = encode_turns(tokenizer, row["turns"], images=len(row_images(row)), known=known, eos=s.eos,
                           num_image_tokens=s.num_image_tokens)
        if len(enc.input_ids) > s.max_length:
            raise RowTooLong(f"{unit.file} (row group {unit.row_group}), row {row['id']}: {len(enc.input_ids)} "
                             f"tokens, max_length is {s.max_length}. Training never cuts a sample: render the "
                             "shards again with this stage's max_length and tokenizer, or raise max_length")
        columns["input_ids"].append(enc.input_ids)
        columns["labels"].append(enc.labels)
        columns["image_starts"].append([a for a, _ in enc.image_spans])
        columns["length"].append(len(enc.input_ids))
    target = unit_path(folder, unit)
    tmp = staging_path(target)
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, SCHEMA) as writer:
        writer.write_table(pa.table(columns, schema=SCHEMA), max_chunksize=4096)
    rename_into_place(tmp, target)
    return len(rows)


def _texts(row: dict, num_image_tokens: int) -> list[str]:
    try:
        pairs = segments(row["turns"], images=len(row_images(row)), num_image_tokens=num_image_tokens)
    except ValueError:
        return []  # encode_turns reports it, naming the row
    return [text for pair in pairs for text in pair]


def read_cached_unit(folder: Path, unit: ShardUnit) -> pa.Table:
    """The unit's tokens, memory-mapped (no copy until a column is converted)."""
    source = pa.memory_map(str(unit_path(folder, unit)), "r")
    return pa.ipc.open_file(source).read_all()


def cached_lengths(folder: Path, units: list[ShardUnit]) -> list[int]:
    """Every row's token count, unit by unit (what packing plans with before training)."""
    return [n for u in units for n in read_cached_unit(folder, u).column("length").to_pylist()]
