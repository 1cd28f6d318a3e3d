"""Packing (training/packing.py): the first-fit-decreasing plan, and a packed row computes exactly what its
samples compute alone: per-sample losses equal within 1e-5 in float32, with one and with two images."""

from __future__ import annotations

import random

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig

from training.data import IGNORE
from training.stream import Collator
from training.model import VisualCLAConfig, VisualCLAModel
from training.packing import efficiency, pack, plan_packs

IMG, N_IMG = 119, 17  # image token id; 17 tokens per image (32 px, patch 8, CLS kept, linear connector)


def tiny() -> VisualCLAModel:
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8)
    text = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=2, max_position_embeddings=512, vocab_size=120)
    torch.manual_seed(0)
    return VisualCLAModel(VisualCLAConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                                          visual_resampler_config={"kind": "linear"}, image_token_id=IMG)).eval()


def sample(rng: random.Random, images: int, prompt: int, answer: int) -> dict:
    """BOS, per image a text run then an image block, the prompt, the answer (the only trained part)."""
    ids = [1]
    for _ in range(images):
        ids += [rng.randrange(3, 110) for _ in range(rng.randrange(1, 4))] + [IMG] * N_IMG
    ids += [rng.randrange(3, 110) for _ in range(prompt)]
    answer_ids = [rng.randrange(3, 110) for _ in range(answer)]
    return {"input_ids": ids + answer_ids, "labels": [IGNORE] * len(ids) + answer_ids,
            "pixels": torch.randn(images, 3, 32, 32)}


def summed_losses(model, batch: dict, pixels: torch.Tensor | None, spans: list[list[tuple[int, int]]]) -> list[float]:
    """Summed token cross-entropy of each (row, [start, end)) sample, from full logits."""
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "padding_stats")},
                       pixel_values=pixels).logits
    out = []
    for row, row_spans in enumerate(spans):
        for a, b in row_spans:
            lab = batch["labels"][row, a + 1:b]
            out.append(torch.nn.functional.cross_entropy(logits[row, a:b - 1], lab, ignore_index=IGNORE,
                                                         reduction="sum").item())
    return out


def test_first_fit_decreasing_is_deterministic_full_and_complete():
    rng = random.Random(0)
    lengths = [rng.randint(5, 200) for _ in range(500)]
    bins = plan_packs(lengths, 256, seed=3)
    assert bins == plan_packs(lengths, 256, seed=3)
    assert sorted(i for b in bins for i in b) == list(range(500))  # every sample exactly once
    assert all(sum(lengths[i] for i in b) <= 256 for b in bins)
    assert efficiency(lengths, bins, 256) > 0.95
    assert len(bins) == -(-sum(lengths) // 256) or len(bins) <= 1.05 * sum(lengths) / 256
    with pytest.raises(ValueError, match="more than the capacity 256"):
        plan_packs([10, 300], 256)


@pytest.mark.parametrize("images", [(1, 0, 1), (2, 1, 0, 2)])
def test_a_packed_row_gives_each_sample_its_own_loss(images):
    rng = random.Random(len(images))
    model = tiny()
    samples = [sample(rng, k, rng.randrange(2, 9), rng.randrange(2, 12)) for k in images]
    alone = []
    collate = Collator(pad_token_id=0)
    for s in samples:
        batch = collate([s])
        alone += summed_losses(model, batch, s["pixels"] if len(s["pixels"]) else None,
                               [[(0, len(s["input_ids"]))]])
    # two packed rows (the second shorter: padded), samples in order, images in order
    rows = [pack(samples[:2]), pack(samples[2:])]
    batch = collate(rows)
    assert "attention_mask" not in batch and batch["padding_stats"][4] == len(samples)
    pixels = torch.cat([s["pixels"] for s in samples])
    spans, row_spans, offset = [], [], 0
    for part in (samples[:2], samples[2:]):
        row_spans, offset = [], 0
        for s in part:
            row_spans.append((offset, offset + len(s["input_ids"])))
            offset += len(s["input_ids"])
        spans.append(row_spans)
    packed = summed_losses(model, batch, pixels if len(pixels) else None, spans)
    torch.testing.assert_close(torch.tensor(packed), torch.tensor(alone), rtol=1e-5, atol=1e-5)
    # the training loss of the packed batch (mean over its trained tokens) is the samples' sum over that count
    model.train()
    trained = int((batch["labels"] != IGNORE).sum())
    with torch.no_grad():
        loss = model(**{k: v for k, v in batch.items() if k != "padding_stats"}, pixel_values=pixels if len(pixels) else None,
                     num_items_in_batch=torch.tensor(trained)).loss
    torch.testing.assert_close(loss * trained, torch.tensor(sum(alone)), rtol=1e-5, atol=1e-4)


def test_packing_without_restarted_positions_would_leak_across_samples():
    """The check above can fail: the same packed row with one causal mask over everything differs."""
    rng = random.Random(5)
    model = tiny()
    samples = [sample(rng, 0, 5, 6), sample(rng, 0, 4, 7)]
    row = pack(samples)
    batch = Collator(pad_token_id=0)([row])
    leaky = {**batch, "attention_mask": torch.ones_like(batch["input_ids"])}
    leaky.pop("position_ids")
    span = [[(len(samples[0]["input_ids"]), len(row["input_ids"]))]]
    assert abs(summed_losses(model, batch, None, span)[0] - summed_losses(model, leaky, None, span)[0]) > 1e-3
