"""Shard rows -> token ids + labels -> length-grouped batches, streamed.

Blocks, each with one job:

* `encode_turns`: a row's rendered `turns` -> `input_ids`, `labels`. BOS + prompt_1 + response_1
  + ... + response_n + EOS; each segment is tokenised on its own (so label boundaries are exact
  and chat sees the same prompt tokens); the image block of prompt_1 becomes `<img>` + N x
  `<img_token>` + `</img>` (`templates.expand_image_block`). Labels are -100 on BOS, prompts
  (image tokens included) and padding; responses + the final EOS are trained. Truncation drops
  whole later turns, may shorten the last kept response, and never cuts prompt_1 (where the image
  block is): a row whose first prompt does not fit is skipped and counted.
* `shard_units` / `assign_units`: a shard set as (file, row group, slice) units; each rank and
  each dataloader worker reads only its own units (`units[consumer::consumers]`), reshuffled
  per pass with a seed, so the order is reproducible and `--resume` replays it.
* `ShardStream`: an `IterableDataset` of ready batches. A buffer of examples is shuffled, then
  (length grouping) sorted by length and cut into batches whose order is shuffled again; every
  consumer yields exactly its quota of batches (passes repeat its units), so ranks stay in step.
* `Collator`: right padding, `pixel_values` for the rows that have an image (or their cached
  `image_features` / `connector_features`), and `padding_stats` (padding, all, trained tokens,
  images) from which the trainer logs `padding_fraction` and counts tokens.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from templates.image import IMAGE_BLOCK, expand_image_block

IGNORE = -100
COLUMNS = ["id", "turns", "image"]


# ---- tokenisation + masking ---------------------------------------------------------------

@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def segments(turns: list[dict], *, image: bool, num_image_tokens: int) -> list[tuple[str, str]]:
    """(prompt, response) texts as they are tokenised: the first prompt's image block expanded."""
    out = []
    for i, turn in enumerate(turns):
        prompt = turn["prompt"]
        if i == 0:
            prompt = expand_image_block(prompt, num_image_tokens, expected=1 if image else 0)
        elif IMAGE_BLOCK in prompt:
            raise ValueError(f"turn {i}: an image block outside the first prompt")
        out.append((prompt, turn["response"]))
    return out


def row_has_image(row: dict) -> bool:
    return row["image"] is not None and row["image"].get("bytes") is not None


def encode_texts(tokenizer, texts: list[str]) -> dict[str, list[int]]:
    """Token ids of many texts in one batched call (a fast tokenizer encodes a batch in parallel,
    without the per-call overhead that dominates short segments)."""
    unique = list(dict.fromkeys(texts))
    return dict(zip(unique, tokenizer(unique, add_special_tokens=False)["input_ids"])) if unique else {}


def encode_turns(tokenizer, turns: list[dict], *, image: bool, num_image_tokens: int, max_length: int,
                 known: dict[str, list[int]] | None = None) -> Encoded | None:
    """Token ids and labels of one rendered conversation (None: the first prompt does not fit).
    `known`: ids of segments already tokenised (`encode_texts`); others are tokenised here."""
    def encode(text: str) -> list[int]:
        found = known.get(text) if known is not None else None
        return list(found) if found is not None else tokenizer.encode(text, add_special_tokens=False)

    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    labels = [IGNORE] * len(ids)
    truncated = False
    turns = segments(turns, image=image, num_image_tokens=num_image_tokens)
    for i, (prompt, response) in enumerate(turns):
        p, r = encode(prompt), encode(response)
        if i == len(turns) - 1:
            r.append(tokenizer.eos_token_id)
        room = max_length - len(ids) - len(p)
        if room <= 0:  # the prompt does not fit (with at least one answer token)
            if i == 0:
                return None
            truncated = True
            break
        if len(r) > room:
            r, truncated = r[:room], True
        ids += p + r
        labels += [IGNORE] * len(p) + r
        if truncated:
            break
    return Encoded(ids, labels, truncated)


def prompt_ids(tokenizer, turns: list[dict], *, image: bool, num_image_tokens: int) -> list[int]:
    """Token ids a model continues at chat/eval time: every turn as in training (each segment on
    its own), the last turn's (empty) response left for the model to write."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pairs = segments(turns, image=image, num_image_tokens=num_image_tokens)
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
    files = sorted(p for p in shards_dir.rglob("*.parquet") if f"{stage}-{split}" in p.name)
    if not files:
        raise FileNotFoundError(f"{shards_dir}: no {stage}/{split} Parquet shards (run render first)")
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
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(unit.file).read_row_group(unit.row_group, columns=columns).to_pylist()
    return rows[unit.slice::unit.slices]


# ---- the stream ---------------------------------------------------------------------------

@dataclass
class StreamConfig:
    batch_size: int
    max_length: int
    num_image_tokens: int
    batches_per_rank: int
    length_grouping: bool = True
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    buffer_batches: int = 32
    feature_cache: Path | None = None
    feature_key: str = "image_features"
    """The model argument cached tensors go to (`features.LEVELS`)."""


class ShardStream(IterableDataset):
    """Ready batches from this rank's (and this worker's) shard units; see the module docstring."""

    def __init__(self, units: list[ShardUnit], tokenizer, collator: "Collator", cfg: StreamConfig) -> None:
        self.units, self.tokenizer, self.collator, self.cfg = units, tokenizer, collator, cfg
        self.skipped = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        cfg = self.cfg
        consumer, consumers = cfg.rank * workers + worker, cfg.world_size * workers
        quota = cfg.batches_per_rank // workers + int(worker < cfg.batches_per_rank % workers)
        rng = random.Random(f"{cfg.seed}:batches:{consumer}")
        yielded, pass_ = 0, 0
        while yielded < quota:
            produced = False
            for batch in self._batches(assign_units(self.units, consumer, consumers, cfg.seed, pass_), rng):
                produced = True
                yield batch
                yielded += 1
                if yielded >= quota:
                    return
            if not produced:
                raise RuntimeError(f"consumer {consumer}: no usable rows in its {len(self.units)} unit(s)")
            pass_ += 1

    def examples(self, units: list[ShardUnit]) -> Iterator[dict[str, Any]]:
        cfg = self.cfg
        for unit in units:
            rows = read_unit(unit)
            features = self._cached_features(unit) if cfg.feature_cache else None
            known = encode_texts(self.tokenizer, [text for row in rows for text in self._texts(row)])
            for i, row in enumerate(rows):
                has_image = row_has_image(row)
                enc = encode_turns(self.tokenizer, row["turns"], image=has_image, known=known,
                                   num_image_tokens=cfg.num_image_tokens, max_length=cfg.max_length)
                if enc is None:
                    self.skipped += 1
                    continue
                ex = {"input_ids": enc.input_ids, "labels": enc.labels}
                if has_image:
                    if features is not None:
                        ex[cfg.feature_key] = features[i]
                    else:
                        ex["image"] = row["image"]["bytes"]
                yield ex

    def _texts(self, row: dict) -> list[str]:
        """The row's segments for the unit's batched tokenisation; none for a malformed row, which
        `encode_turns` then reports as it would alone."""
        image = row_has_image(row)
        try:
            pairs = segments(row["turns"], image=image, num_image_tokens=self.cfg.num_image_tokens)
        except ValueError:
            return []
        return [text for pair in pairs for text in pair]

    def _batches(self, units: list[ShardUnit], rng: random.Random) -> Iterator[dict[str, torch.Tensor]]:
        cfg, size = self.cfg, self.cfg.batch_size
        buffer: list[dict] = []
        for ex in self.examples(units):
            buffer.append(ex)
            if len(buffer) >= size * cfg.buffer_batches:
                yield from self._flush(buffer, rng, final=False)
        yield from self._flush(buffer, rng, final=True)

    def _flush(self, buffer: list[dict], rng: random.Random, final: bool) -> Iterator[dict[str, torch.Tensor]]:
        size = self.cfg.batch_size
        rng.shuffle(buffer)
        if self.cfg.length_grouping:
            buffer.sort(key=lambda e: len(e["input_ids"]))
        n_full = len(buffer) // size
        batches = [buffer[i * size:(i + 1) * size] for i in range(n_full)]
        rest = buffer[n_full * size:]
        if final and rest:
            batches.append(rest)
        rng.shuffle(batches)
        buffer[:] = [] if final else rest
        for b in batches:
            yield self.collator(b)

    def _cached_features(self, unit: ShardUnit) -> torch.Tensor:
        from safetensors.torch import load_file

        path = Path(self.cfg.feature_cache) / f"{unit.key}.safetensors"
        return load_file(str(path))["features"]


# ---- collation ----------------------------------------------------------------------------

@dataclass
class Collator:
    pad_token_id: int
    image_processor: Any = None
    pad_to_multiple_of: int = 1

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        longest = math.ceil(longest / self.pad_to_multiple_of) * self.pad_to_multiple_of
        n = len(examples)
        pads = [longest - len(e["input_ids"]) for e in examples]
        input_ids = torch.tensor([e["input_ids"] + [self.pad_token_id] * k for e, k in zip(examples, pads)])
        labels = torch.tensor([e["labels"] + [IGNORE] * k for e, k in zip(examples, pads)])
        attention_mask = torch.tensor([[1] * (longest - k) + [0] * k for k in pads])
        real = n * longest - sum(pads)
        images = sum(1 for e in examples if "image" in e or "image_features" in e or "connector_features" in e)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                 "padding_stats": torch.tensor([n * longest - real, n * longest, int((labels != IGNORE).sum()), images])}
        for key in ("image_features", "connector_features"):
            if any(key in e for e in examples):
                batch[key] = torch.stack([e[key] for e in examples if key in e])
        images = [e["image"] for e in examples if "image" in e]
        if images:
            batch["pixel_values"] = self.process(images)
        return batch

    def process(self, images: list) -> torch.Tensor:
        from PIL import Image

        pil = [Image.open(io.BytesIO(b)).convert("RGB") if isinstance(b, (bytes, bytearray)) else b.convert("RGB")
               for b in images]
        return self.image_processor(images=pil, return_tensors="pt")["pixel_values"]


def count_rows(units: list[ShardUnit]) -> int:
    return sum(u.rows for u in units)
