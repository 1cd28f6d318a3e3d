"""Shard rows -> token ids + labels, and shard sets -> units (the stream and the collator: training/stream.py).

Blocks, each with one job:

* `encode_turns`: a row's rendered `turns` -> `input_ids`, `labels`, `image_spans`. BOS + prompt_1 +
  response_1 + ... + response_n (+ EOS when the template says so); each segment is tokenised on its
  own (so label boundaries are exact and chat sees the same prompt tokens); each image block becomes
  `<img>` + N x `<img_token>` + `</img>` (`templates.expand_image_block`), the k-th block the k-th
  image, in any prompt. Labels are -100 on BOS, prompts (image tokens included) and padding;
  responses (+ EOS) are trained. Nothing is ever cut: `fitting_turns` tells render how many whole
  leading turns fit `max_length`, and a row that still does not fit stops training with `RowTooLong`
  naming it (render drops or rejects such rows; rerender with the stage's max_length).
* `shard_units` / `assign_units`: a shard set as (file, row group, slice) units; each rank and
  each dataloader worker reads only its own units (`units[consumer::consumers]`), reshuffled
  per pass with a seed, so the order is reproducible and `--resume` replays it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from templates.image import IMAGE_BLOCK, IMG_TOKEN, count_image_blocks, expand_image_block
from templates.rows import row_images

IGNORE = -100
COLUMNS = ["id", "turns", "image", "images"]
"""What training reads of a row (`images` is absent from shards written before it existed)."""


# ---- tokenisation + masking ---------------------------------------------------------------

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    image_spans: list[tuple[int, int]] = field(default_factory=list)
    """[start, end) of each image's `<img_token>` run in `input_ids`, in image order."""


class RowTooLong(ValueError):
    """A shard row longer than the stage's max_length: training never cuts one (render fits rows)."""


def segments(turns: list[dict], *, images: int, num_image_tokens: int) -> list[tuple[str, str]]:
    """(prompt, response) texts as they are tokenised: every image block expanded. The prompts must hold
    exactly `images` blocks (the row's images, in order); responses none."""
    found = sum(count_image_blocks(t["prompt"]) for t in turns)
    if found != images:
        raise ValueError(f"{found} image block(s) {IMAGE_BLOCK!r} in the prompts for {int(images)} image(s)")
    out = []
    for i, turn in enumerate(turns):
        if IMAGE_BLOCK in turn["response"]:
            raise ValueError(f"turn {i}: an image block in a response")
        out.append((expand_image_block(turn["prompt"], num_image_tokens, expected=None), turn["response"]))
    return out


def row_images_bytes(row: dict) -> list[bytes]:
    """The encoded images of a shard row, in order (`templates.rows.row_images`)."""
    return [im["bytes"] for im in row_images(row)]


def encode_texts(tokenizer, texts: list[str]) -> dict[str, list[int]]:
    """Token ids of many texts in one batched call (a fast tokenizer encodes a batch in parallel,
    without the per-call overhead that dominates short segments)."""
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"])) if unique else {}


def _encoder(tokenizer, known: dict[str, list[int]] | None):
    def encode(text: str) -> list[int]:
        found = known.get(text) if known is not None else None
        return list(found) if found is not None else tokenizer.encode(text, add_special_tokens=False)
    return encode


def encode_turns(tokenizer, turns: list[dict], *, images: int, num_image_tokens: int, eos: bool = True,
                 known: dict[str, list[int]] | None = None) -> Encoded:
    """Token ids, labels and image spans of one rendered conversation, whole. `eos`: the template's
    `eos` (append the tokenizer's EOS, trained). `known`: ids of segments already tokenised."""
    encode = _encoder(tokenizer, known)
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE] * len(ids)
    for prompt, response in segments(turns, images=images, num_image_tokens=num_image_tokens):
        p, r = encode(prompt), encode(response)
        ids += p + r
        labels += [IGNORE] * len(p) + r
    if eos:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return Encoded(ids, labels, image_spans(ids, tokenizer.convert_tokens_to_ids(IMG_TOKEN), num_image_tokens))


def image_spans(ids: list[int], image_token_id: int, num_image_tokens: int) -> list[tuple[int, int]]:
    """[start, end) of each run of `num_image_tokens` image tokens (one per image, in order)."""
    positions = [i for i, t in enumerate(ids) if t == image_token_id]
    return [(positions[k], positions[k] + num_image_tokens) for k in range(0, len(positions), num_image_tokens)]


def turn_lengths(tokenizer, turns: list[dict], *, images: int, num_image_tokens: int,
                 known: dict[str, list[int]] | None = None) -> list[int]:
    """Tokens of each turn as `encode_turns` counts them (BOS counted in the first; EOS not counted)."""
    encode = _encoder(tokenizer, known)
    lengths = [len(encode(p)) + len(encode(r)) for p, r in segments(turns, images=images,
                                                                     num_image_tokens=num_image_tokens)]
    lengths[0] += int(tokenizer.bos_token_id is not None)
    return lengths


def fitting_turns(lengths: list[int], max_length: int, eos: bool = True) -> int:
    """How many whole leading turns fit `max_length` tokens with the closing EOS (0: not even the first)."""
    total, kept = int(eos), 0
    for n in lengths:
        total += n
        if total > max_length:
            break
        kept += 1
    return kept


def prompt_ids(tokenizer, turns: list[dict], *, images: int, num_image_tokens: int) -> list[int]:
    """Token ids a model continues at chat/eval time: every turn as in training (each segment on
    its own), the last turn's (empty) response left for the model to write."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pairs = segments(turns, images=images, num_image_tokens=num_image_tokens)
    for i, (prompt, response) in enumerate(pairs):
        ids += tokenizer.encode(prompt, add_special_tokens=False)
        if i < len(pairs) - 1:
            ids += tokenizer.encode(response, add_special_tokens=False)
    return ids


# ---- shards -> units -> consumers ---------------------------------------------------------

@dataclass(frozen=True)
class ShardUnit:
    file: str
    row_group: int
    rows: int
    slice: int = 0
    slices: int = 1

    @property
    def key(self) -> str:
        return f"{Path(self.file).stem}.rg{self.row_group}.s{self.slice}of{self.slices}"


def subset_files(shards_dir: Path, subset: str, split: str = "train") -> list[Path]:
    """The Parquet shards of one subset (`pretrain` / `sft`) and split (render's `data/<subset>/<split>/`
    layout)."""
    shards_dir = Path(shards_dir)
    for folder in (shards_dir / "data" / subset / split, shards_dir / subset / split):
        files = sorted(folder.glob("*.parquet"))
        if files:
            return files
    files = sorted(p for p in shards_dir.rglob("*.parquet") if f"{subset}-{split}" in p.name)
    if not files:
        raise FileNotFoundError(f"{shards_dir}: no {subset}/{split} Parquet shards (run render first)")
    return files


def shard_units(files: list[Path], consumers: int = 1) -> list[ShardUnit]:
    """Every (file, row group) of the shards, split into row slices if there are fewer units than consumers."""
    import pyarrow.parquet as pq

    units = []
    for f in files:
        meta = pq.ParquetFile(f).metadata
        units += [ShardUnit(str(f), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                  if meta.row_group(g).num_rows]
    if units and len(units) < consumers:
        k = math.ceil(consumers / len(units))
        units = [ShardUnit(u.file, u.row_group, len(range(s, u.rows, k)), s, k) for u in units for s in range(k)]
    return units


def assign_units(units: list[ShardUnit], consumer: int, consumers: int, seed: int, pass_: int) -> list[ShardUnit]:
    """This consumer's units for one pass: a seeded shuffle of its fixed share."""
    mine = units[consumer::consumers]
    rng = random.Random(f"{seed}:{consumer}:{pass_}")
    rng.shuffle(mine)
    return mine


def read_unit(unit: ShardUnit, columns: list[str] = COLUMNS) -> list[dict[str, Any]]:
    """The unit's rows, with those of `columns` the shard has (older shards lack `images`)."""
    import pyarrow.parquet as pq

    shard = pq.ParquetFile(unit.file)
    present = [c for c in columns if c in shard.schema_arrow.names]
    rows = shard.read_row_group(unit.row_group, columns=present).to_pylist()
    return rows[unit.slice::unit.slices]


def count_rows(units: list[ShardUnit]) -> int:
    return sum(u.rows for u in units)
