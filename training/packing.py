"""Packing: several tokenised samples, with their images, in one sequence of up to `max_length` tokens.

    bins = plan_packs([len(e["input_ids"]) for e in examples], capacity=max_length, seed=7)
    packed = [pack(examples[i] for i in b) for b in bins]     # each one example the Collator pads

`plan_packs` is first-fit-decreasing: the samples sorted longest first (ties in a seeded order), each
put in the first bin with room, so the plan is deterministic for a seed and bins end up ~full
(`efficiency`: real tokens / (bins x capacity)).

Attention never crosses samples: a packed example carries `position_ids` that restart at 0 for every
sample, and the Collator then sends no `attention_mask`. transformers reads such position ids as a
packed batch (`masking_utils.find_packed_sequence_indices`): a block-diagonal causal mask on CPU
(SDPA / eager), FlashAttention-2's varlen kernels on GPU. Rotary positions restart too, so each
sample's logits are those it gets alone. Image features still go in order: the model fills the image
tokens left to right with the batch's images in order, and `pack` keeps each sample's images in its
own order, samples one after another. Each sample's first token is no target (the previous sample's last
position would otherwise predict it), as it is not when the sample is alone; so the summed loss of a
packed row is the sum of its samples' losses.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

import torch

from training.data import IGNORE


def plan_packs(lengths: list[int], capacity: int, seed: int = 0) -> list[list[int]]:
    """Indices of `lengths` grouped in bins of total length <= `capacity` (first-fit-decreasing)."""
    too_long = [i for i, n in enumerate(lengths) if n > capacity]
    if too_long:
        raise ValueError(f"plan_packs: sample {too_long[0]} has {lengths[too_long[0]]} tokens, more than the "
                         f"capacity {capacity}; render fits samples to max_length before training")
    order = list(range(len(lengths)))
    random.Random(f"{seed}:pack").shuffle(order)  # ties between equal lengths: seeded, not input order
    order.sort(key=lambda i: -lengths[i])
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(capacity - n)
    return bins


def efficiency(lengths: list[int], bins: list[list[int]], capacity: int) -> float:
    """Real tokens over the tokens the bins hold (1.0: every bin full)."""
    return sum(lengths) / (len(bins) * capacity) if bins else 1.0


def pack(examples: Iterable[dict]) -> dict:
    """One example made of several: ids, labels and `position_ids` (restarting per sample) concatenated,
    image spans shifted, images (or cached features) kept in order; `samples` counts what went in."""
    out: dict = {"input_ids": [], "labels": [], "position_ids": [], "image_spans": [], "samples": 0}
    features: dict[str, list[torch.Tensor]] = {}
    for ex in examples:
        offset = len(out["input_ids"])
        out["input_ids"] += ex["input_ids"]
        # a sample's first token is never a target alone (nothing precedes it); packed, the previous
        # sample's last position would predict it: keep it out of the loss
        out["labels"] += [IGNORE] + ex["labels"][1:]
        out["position_ids"] += list(range(len(ex["input_ids"])))
        out["image_spans"] += [(a + offset, b + offset) for a, b in ex.get("image_spans", ())]
        out["samples"] += 1
        if ex.get("images"):
            out.setdefault("images", []).extend(ex["images"])
        for key in ("image_features", "connector_features"):
            if key in ex:
                features.setdefault(key, []).append(ex[key])
    out.update({key: torch.cat(parts) for key, parts in features.items()})
    return out
