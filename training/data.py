"""Shard rows -> token ids + labels -> length-grouped batches, streamed.

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
* `ShardStream`: an `IterableDataset` of ready batches. A buffer of examples is shuffled, then
  (length grouping) sorted by length and cut into batches whose order is shuffled again; every
  consumer yields exactly its quota of batches (passes repeat its units), so ranks stay in step.
* `Collator`: right padding, `pixel_values` for every image of the batch in order (a row's images in
  order, rows one after another; or their cached `image_features` / `connector_features`), and
  `padding_stats` (padding, all, trained tokens, images) from which the trainer logs
  `padding_fraction` and counts tokens.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

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
    eos: bool = True
    """The stage template's `eos`: the tokenizer's EOS closes each conversation."""
    token_cache: Path | None = None
    """A `training.token_cache` folder holding every unit's tokens: read instead of tokenising."""
    packing: bool = False
    """Pack each buffer's samples into sequences of up to max_length (`training.packing`)."""


class ShardStream(IterableDataset):
    """Ready batches from this rank's (and this worker's) shard units; see the module docstring."""

    def __init__(self, units: list[ShardUnit], tokenizer, collator: "Collator", cfg: StreamConfig) -> None:
        self.units, self.tokenizer, self.collator, self.cfg = units, tokenizer, collator, cfg

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
        if self.cfg.token_cache is not None:
            yield from self._cached_examples(units)
            return
        cfg = self.cfg
        for unit in units:
            rows = read_unit(unit)
            cached = self._cached_features(unit) if cfg.feature_cache else None
            known = encode_texts(self.tokenizer, [text for row in rows for text in self._texts(row)])
            for i, row in enumerate(rows):
                images = row_images_bytes(row)
                enc = encode_turns(self.tokenizer, row["turns"], images=len(images), known=known, eos=cfg.eos,
                                   num_image_tokens=cfg.num_image_tokens)
                if len(enc.input_ids) > cfg.max_length:
                    raise RowTooLong(
                        f"{unit.file} (row group {unit.row_group}), row {row['id']}: {len(enc.input_ids)} tokens, "
                        f"max_length is {cfg.max_length}. Training never cuts a sample: render the shards again "
                        "with this stage's max_length and tokenizer (render keeps whole leading turns or rejects "
                        "the row as too_long), or raise the stage's max_length")
                ex = {"input_ids": enc.input_ids, "labels": enc.labels, "image_spans": enc.image_spans}
                if images and cached is not None:
                    features, offsets = cached
                    ex[cfg.feature_key] = features[int(offsets[i]):int(offsets[i + 1])]
                elif images:
                    ex["images"] = images
                yield ex

    def _cached_examples(self, units: list[ShardUnit]) -> Iterator[dict[str, Any]]:
        """Examples from the tokenised cache (`training.token_cache`): no tokenisation; images come
        from the feature cache, else only the shard's image columns are read."""
        from training.token_cache import read_cached_unit

        cfg, n = self.cfg, self.cfg.num_image_tokens
        for unit in units:
            table = read_cached_unit(cfg.token_cache, unit)
            ids, labels, starts = (table.column(c).to_pylist() for c in ("input_ids", "labels", "image_starts"))
            cached = self._cached_features(unit) if cfg.feature_cache else None
            rows = read_unit(unit, ["image", "images"]) if cached is None and any(starts) else None
            for i in range(len(ids)):
                ex = {"input_ids": ids[i], "labels": labels[i], "image_spans": [(a, a + n) for a in starts[i]]}
                if starts[i] and cached is not None:
                    features, offsets = cached
                    ex[cfg.feature_key] = features[int(offsets[i]):int(offsets[i + 1])]
                elif starts[i]:
                    ex["images"] = row_images_bytes(rows[i])
                yield ex

    def _texts(self, row: dict) -> list[str]:
        """The row's segments for the unit's batched tokenisation; none for a malformed row, which
        `encode_turns` then reports as it would alone."""
        try:
            pairs = segments(row["turns"], images=len(row_images(row)), num_image_tokens=self.cfg.num_image_tokens)
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
        if self.cfg.packing:  # every sample of the buffer, packed into sequences of up to max_length
            from training.packing import pack, plan_packs

            bins = plan_packs([len(e["input_ids"]) for e in buffer], self.cfg.max_length, rng.getrandbits(32))
            buffer[:] = [pack(buffer[i] for i in b) for b in bins]
            rng.shuffle(buffer)
        elif self.cfg.length_grouping:
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

    def _cached_features(self, unit: ShardUnit) -> tuple[torch.Tensor, torch.Tensor]:
        """(features of every image of the unit [images, tokens, width], row offsets [rows + 1])."""
        from safetensors.torch import load_file

        path = Path(self.cfg.feature_cache) / f"{unit.key}.safetensors"
        cached = load_file(str(path))
        return cached["features"], cached["offsets"]


# ---- collation ----------------------------------------------------------------------------

FEATURE_KEYS = ("image_features", "connector_features")


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
        images = [im for e in examples for im in e.get("images", ())]
        counted = len(images) + sum(int(e[key].shape[0]) for e in examples for key in FEATURE_KEYS if key in e)
        samples = sum(e.get("samples", 1) for e in examples)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                 "padding_stats": torch.tensor([n * longest - real, n * longest, int((labels != IGNORE).sum()), counted,
                                                samples])}
        if any("position_ids" in e for e in examples):
            # packed rows: positions restart per sample (the padding too, as a block of its own) and no
            # attention mask, so transformers masks block-diagonally (training.packing)
            batch["position_ids"] = torch.tensor([e.get("position_ids", list(range(len(e["input_ids"])))) +
                                                  list(range(k)) for e, k in zip(examples, pads)])
            del batch["attention_mask"]
        for key in FEATURE_KEYS:  # a row's images in order, rows one after another (as the image tokens)
            if any(key in e for e in examples):
                batch[key] = torch.cat([e[key] for e in examples if key in e])
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
