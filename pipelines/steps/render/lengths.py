"""Samples that always fit: the token length of every rendered row, checked against its stage's max_length.

    rules = length_rules(recipe, templates)     # per subset, or why there are none
    fitted = rules["sft"].fit(turns, images)    # Fitted(kept turns, tokens) or TooLong

A row is measured exactly as the trainer will encode it (`training.data.turn_lengths`: the LLM's
tokenizer, each segment on its own, every image block as the model's N image tokens, BOS and the
template's EOS). A row that does not fit keeps its whole leading turns and drops the trailing ones
(the images of dropped turns go with them); a row whose first turn alone does not fit is rejected
with reason `too_long` and its figures. Nothing is ever cut inside a turn, so never inside an image
block, and the trainer never has to cut (it stops on a row that does not fit).

`max_length` of a subset is the smallest of the recipe's stages that train on it. The check needs the
LLM's tokenizer before training: an LLM built from `init` (the demo) has none yet (the trainer trains
one on the shards), so its rows are not measured and the manifest says so (`token_lengths.checked`).
Token lengths go into a histogram per subset (bounded memory whatever the corpus size), from which the
manifest records percentiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LengthRule:
    """How long one subset's rows may be; picklable (it travels to the render workers)."""

    tokenizer: str
    """The LLM's tokenizer folder (`model.llm.tokenizer` or `model.llm.path`)."""
    max_length: int
    num_image_tokens: int
    eos: bool

    def fit(self, turns: list[dict], images: int) -> tuple[int, int, int]:
        """(whole leading turns that fit, their tokens, tokens of the whole row); 0 kept: even the first
        turn does not fit."""
        from training.data import fitting_turns, turn_lengths

        lengths = turn_lengths(_tokenizer(self.tokenizer), turns, images=images,
                               num_image_tokens=self.num_image_tokens)
        kept = fitting_turns(lengths, self.max_length, self.eos)
        return kept, sum(lengths[:kept]) + int(self.eos), sum(lengths) + int(self.eos)


@lru_cache(maxsize=4)
def _tokenizer(folder: str):
    from training.tokenizer import load_tokenizer

    return load_tokenizer(folder)


def length_rules(recipe: Any, templates: dict[str, str]) -> tuple[dict[str, LengthRule], str | None]:
    """({subset: rule}, None), or ({}, why the rows are not measured)."""
    from templates.registry import get_template
    from training.build import build_tokenizer_for, visualcla_config

    model = recipe.model
    source = model.llm.tokenizer or model.llm.path
    if source is None:
        return {}, "the LLM is built from `init`: its tokenizer is made from the shards at training time"
    build_tokenizer_for(model)  # the same checks as training (folder, tokenizer files, no custom code)
    n = visualcla_config(model).num_image_tokens
    rules = {}
    for subset in templates:
        lengths = [s.max_length for s in recipe.stages.values() if s.data == subset]
        if lengths:
            rules[subset] = LengthRule(str(source), min(lengths), n, get_template(templates[subset]).eos)
    return rules, None


def histogram(lengths: np.ndarray, size: int) -> np.ndarray:
    """Counts of each length 0..size-1 (longer ones in the last bin)."""
    return np.bincount(np.minimum(lengths, size - 1), minlength=size)


def summary(hist: np.ndarray, max_length: int) -> dict:
    """Rows, percentiles, longest and mean token length of a histogram."""
    rows = int(hist.sum())
    if rows == 0:
        return {"rows": 0, "max_length": max_length}
    cumulative = np.cumsum(hist)
    out = {"rows": rows, "max_length": max_length}
    for p in PERCENTILES:
        out[f"p{p}"] = int(np.searchsorted(cumulative, p / 100 * rows))
    out["max"] = int(np.nonzero(hist)[0][-1])
    out["mean"] = round(float((np.arange(len(hist)) * hist).sum() / rows), 1)
    return out
