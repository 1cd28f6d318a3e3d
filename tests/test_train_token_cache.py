"""Tokenise once (training/token_cache.py): the cache gives the stream exactly the batches live tokenisation
gives, is keyed by everything the tokens depend on, resumes a killed build, builds the same files in worker
processes, and a stage trains from it (and with packing) end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from training.config import ModelConfig, StageConfig
from training.data import shard_units, subset_files
from training.stream import Collator, ShardStream, StreamConfig
from training.run import train_stage
from training.synthetic import make_rows, write_synthetic_shards
from training.token_cache import (
    TokenSettings,
    build_token_cache,
    cache_key,
    cached_lengths,
    read_cached_unit,
    unit_path,
)
from training.tokenizer import build_tokenizer

SETTINGS = TokenSettings("visualcla", True, 256, 4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_synthetic_shards(tmp_path_factory.mktemp("shards"), num_images=40, row_group_rows=8)


@pytest.fixture(scope="module")
def tok():
    pretrain, sft = make_rows(40)
    texts = [t for row in pretrain + sft for turn in row["turns"] for t in (turn["prompt"], turn["response"])]
    return build_tokenizer(texts, vocab_size=300)


def _batches(units, tok, cache=None):
    from transformers import CLIPImageProcessorPil

    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    stream = ShardStream(units, tok, Collator(pad_token_id=tok.pad_token_id, image_processor=proc), StreamConfig(
        batch_size=4, max_length=256, num_image_tokens=4, batches_per_rank=6, seed=1, token_cache=cache))
    return list(stream)


def test_the_cache_feeds_the_same_batches_as_tokenising(tmp_path, shards, tok):
    units = shard_units(subset_files(shards, "sft"))
    folder = tmp_path / cache_key(units, tok, SETTINGS)
    first = build_token_cache(units, tok, folder, SETTINGS)
    assert first == {"units": len(units), "built": len(units), "rows": sum(u.rows for u in units)}
    assert build_token_cache(units, tok, folder, SETTINGS)["built"] == 0  # a second epoch / rerun reads it
    live, cached = _batches(units, tok), _batches(units, tok, folder)
    assert len(live) == len(cached) == 6
    for a, b in zip(live, cached):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k
    assert len(cached_lengths(folder, units)) == sum(u.rows for u in units)


def test_the_key_changes_with_every_input(tmp_path, shards, tok):
    units = shard_units(subset_files(shards, "sft"))
    base = cache_key(units, tok, SETTINGS)
    other_tok = build_tokenizer(["别的文字"] * 4, vocab_size=120)
    variants = [cache_key(units, tok, TokenSettings("visualcla", True, 128, 4)),
                cache_key(units, tok, TokenSettings("llava", True, 256, 4)),
                cache_key(units, tok, TokenSettings("visualcla", False, 256, 4)),
                cache_key(units, tok, TokenSettings("visualcla", True, 256, 5)),
                cache_key(units, other_tok, SETTINGS),
                cache_key(shard_units(subset_files(shards, "pretrain")), tok, SETTINGS)]
    assert base not in variants and len(set(variants)) == len(variants)
    assert cache_key(units, tok, SETTINGS) == base
    copy = write_synthetic_shards(tmp_path / "other", num_images=40, row_group_rows=8, seed=1)  # other content
    assert cache_key(shard_units(subset_files(copy, "sft")), tok, SETTINGS) != base


def test_a_killed_build_resumes_and_workers_write_the_same_files(tmp_path, shards, tok):
    units = shard_units(subset_files(shards, "sft"))
    folder = tmp_path / "c"
    build_token_cache(units[:2], tok, folder, SETTINGS)
    unit_path(folder, units[2]).with_name(".tmp-" + unit_path(folder, units[2]).name).write_bytes(b"half")
    resumed = build_token_cache(units, tok, folder, SETTINGS)
    assert resumed["built"] == len(units) - 2
    parallel = build_token_cache(units, tok, tmp_path / "p", SETTINGS, workers=2)
    assert parallel["built"] == len(units)
    for u in units:
        assert read_cached_unit(folder, u).equals(read_cached_unit(tmp_path / "p", u))


LLM = {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 256}
VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
          "image_size": 32, "patch_size": 8}


def test_a_stage_trains_from_the_cache_and_with_packing(tmp_path, shards):
    cfg = ModelConfig(architecture="llava", connector={"kind": "mlp2x_gelu"}, llm={"init": LLM},
                      vision={"kind": "clip", "image_size": 32, "init": VISION})
    stage = {"data": "sft", "template": "visualcla", "epochs": 1, "batch_size": 4, "max_length": 192,
             "logging_steps": 1, "save_steps": 100, "warmup_ratio": 0.0,
             "trainable": {"vision": "frozen", "connector": "full", "projection": "full", "llm": "full"}}
    plain = train_stage(cfg, "s", StageConfig(**stage), shards, tmp_path / "train" / "plain")
    packed = train_stage(cfg, "s", StageConfig(**stage, packing=True), shards, tmp_path / "train" / "packed")
    assert plain["token_cache"] and (tmp_path / "train" / "token_cache").is_dir()
    assert plain["samples"] == packed["samples"] == 48  # 40 image rows + 8 text rows, one epoch each
    assert packed["steps"] < plain["steps"] and packed["packing_efficiency"] > 0.5
    assert packed["padding_fraction"] < plain["padding_fraction"] or plain["padding_fraction"] < 0.05
    assert packed["trained_tokens"] == plain["trained_tokens"]  # the same targets, fewer steps


def test_a_packing_stream_trains_every_sample_of_a_pass_once(shards, tok):
    """Packed rows are never packed again: over one pass every sample is in exactly one row of one batch
    (small buffers: the samples of a partial last batch go back unpacked), and each row's positions restart
    once per sample it holds."""
    import random

    from transformers import CLIPImageProcessorPil

    units = shard_units(subset_files(shards, "sft"))
    folder = Path(tempfile.mkdtemp()) / "tokens"
    build_token_cache(units, tok, folder, SETTINGS)
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    cfg = StreamConfig(batch_size=2, max_length=256, num_image_tokens=4, batches_per_rank=1, seed=1,
                       token_cache=folder, packing=True, buffer_batches=4)
    stream = ShardStream(units, tok, Collator(pad_token_id=tok.pad_token_id, image_processor=proc), cfg)
    samples = 0
    for batch in stream._batches(units, random.Random(1)):  # one pass
        held = int(batch["padding_stats"][4])
        samples += held
        width = batch["input_ids"].shape[1]
        padded = (batch["labels"][:, -1] == -100) & (batch["input_ids"][:, -1] == tok.pad_token_id)
        starts = (batch["position_ids"] == 0).sum(1) - padded.long()  # less each padding block
        assert int(starts.sum()) == held and batch["input_ids"].shape == (batch["position_ids"].shape[0], width)
    assert samples == sum(u.rows for u in units)
