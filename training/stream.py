"""Units -> ready batches: the stream a stage trains from, and the collator.

* `ShardStream`: an `IterableDataset` of ready batches. Each unit's rows are tokenised
  (`training.data.encode_turns`) or read from the tokenised cache (`training.token_cache`). A buffer of
  examples is shuffled, then packed (`training.packing`) or (length grouping) sorted by length and cut
  into batches whose order is shuffled again; every consumer yields exactly its quota of batches
  (passes repeat its units), so ranks stay in step.
* `Collator`: right padding, `pixel_values` for every image of the batch in order (a row's images in
  order, rows one after another; or their cached `image_features` / `connector_features`),
  `position_ids` restarting per sample for packed rows (and then no attention mask), and
  `padding_stats` (padding, all, trained tokens, images, samples) from which the trainer logs
  `padding_fraction` and counts tokens.
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

from templates.rows import row_images
from training.data import (
    IGNORE,
    RowTooLong,
    ShardUnit,
    assign_units,
    encode_texts,
    encode_turns,
    read_unit,
    row_images_bytes,
    segments,
)
from training.packing import pack, plan_packs
from training.token_cache import read_cached_unit

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
        if self.cfg.packing:
            yield from self._flush_packed(buffer, rng, final)
            return
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

    def _flush_packed(self, buffer: list[dict], rng: random.Random, final: bool) -> Iterator[dict[str, torch.Tensor]]:
        """The buffer's samples planned into sequences of up to max_length, full batches of them yielded; the
        samples of a last, partial batch go back to the buffer unpacked (packed again with the next ones)."""
        size = self.cfg.batch_size
        bins = plan_packs([len(e["input_ids"]) for e in buffer], self.cfg.max_length, rng.getrandbits(32))
        rng.shuffle(bins)
        n_full = len(bins) // size + int(final and len(bins) % size > 0)
        batches = [bins[k * size:(k + 1) * size] for k in range(n_full)]
        rest = [buffer[i] for b in bins[n_full * size:] for i in b]
        packed = [[pack(buffer[i] for i in b) for b in batch] for batch in batches]
        buffer[:] = rest
        for rows in packed:
            yield self.collator(rows)

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
