"""The record-level half of the curate step: caption rules and language, duplicate text-only records,
CLIP image-text similarity. One `TextJudge` per run; `check(window)` gives one verdict per record.

Captions get every rule of curators/text_rules.py (length, boilerplate, URL-only, repeats, language);
other records (VQA, conversations, text-only instructions) only the language rule: their length and
wording are their own. A text-only record repeating an earlier one word for word is `duplicate_text`.
With `curate.clip`, caption records whose image passed get a CLIP score (cached by model, image hash
and text, so a later run with another threshold reads them), compared with `threshold`, or with the
`quantile` of all caption scores of the run (computed in `prepare`).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from curators.config import CurateConfig
from curators.text_rules import TextRules, check_texts
from pipelines.recipe import Recipe
from templates.schema import IMAGE_PLACEHOLDER, Record


@dataclass(slots=True)
class TextVerdict:
    reason: str | None = None
    detail: str = ""
    figures: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    normalised: list[dict[str, str]] | None = None
    """The record's messages rewritten (traditional -> simplified Chinese), or None."""


class TextJudge:
    def __init__(self, cfg: CurateConfig, recipe: Recipe) -> None:
        self.cfg = cfg
        t = cfg.text
        lengths = {k: v for k, v in (("min_chars", t.min_chars), ("max_chars", t.max_chars)) if v is not None}
        self.caption_rules = TextRules(traditional=t.traditional, **lengths)
        self.language_only = TextRules(min_chars=0, max_chars=10**9, traditional=t.traditional, boilerplate=(),
                                       max_repeat_run=10**9, max_repeated_ngram_share=1.0, url_only=False)
        self.seen_texts: set[bytes] = set()
        self.counts: Counter = Counter()
        self.languages: Counter = Counter()
        self.caption_lengths: list[int] = []
        self.clip = _Clip(cfg, recipe) if cfg.clip.mode != "off" else None

    def prepare(self, records: Iterator[Record], image_sha: dict[str, str]) -> None:
        """Score every caption record before any decision (a quantile needs them all)."""
        if self.clip is not None:
            self.clip.prepare(records, image_sha)

    def check(self, records: list[Record], facts: dict, images: dict) -> list[TextVerdict]:
        out = [TextVerdict() for _ in records]
        if self.cfg.text.mode != "off":
            self._rules(records, out, captions=True)
            self._rules(records, out, captions=False)
        self._duplicate_texts(records, out)
        if self.clip is not None:
            self.clip.check(records, out, facts, images)
        return out

    def _rules(self, records: list[Record], out: list[TextVerdict], captions: bool) -> None:
        chosen = [i for i, r in enumerate(records) if (r.task == "caption") == captions and out[i].reason is None]
        rules = self.caption_rules if captions else self.language_only
        for lang in sorted({records[i].lang for i in chosen}):
            idx = [i for i in chosen if records[i].lang == lang]
            texts = [text_of(records[i]) for i in idx]
            expected = lang if self.cfg.text.language else None
            for i, text, v in zip(idx, texts, check_texts(texts, expected, rules)):
                self._apply(records[i], out[i], text, v, captions)

    def _apply(self, record: Record, tv: TextVerdict, text: str, v: Any, caption: bool) -> None:
        if v.lang is not None:
            tv.figures["lang"] = v.lang
            tv.figures["lang_confidence"] = round(v.lang_confidence or 0.0, 3)
            self.languages[v.lang] += 1
        if caption:
            self.caption_lengths.append(len(text))
        if v.reason is not None:
            if self.cfg.text.mode == "filter":
                tv.reason, tv.detail = v.reason, v.detail
            else:
                tv.flags.append(v.reason)
        elif v.normalised is not None and v.normalised != text:
            tv.normalised = _normalise(record)
            self.counts["normalised_to_simplified"] += 1

    def _duplicate_texts(self, records: list[Record], out: list[TextVerdict]) -> None:
        if self.cfg.exact.mode == "off":
            return
        for r, tv in zip(records, out):
            if r.image is not None or tv.reason is not None:
                continue
            key = hashlib.sha256(" ".join(text_of(r).split()).encode()).digest()[:12]
            if key in self.seen_texts:
                if self.cfg.exact.mode == "filter":
                    tv.reason, tv.detail = "duplicate_text", "the same text as an earlier text-only record"
                else:
                    tv.flags.append("duplicate_text")
            self.seen_texts.add(key)


def text_of(record: Record) -> str:
    """A caption's text, or every message of other records, `<image>` removed."""
    if record.task == "caption":
        return next((m["content"] for m in record.messages if m["role"] == "assistant"), "").strip()
    return "\n".join(m["content"].replace(IMAGE_PLACEHOLDER, "").strip() for m in record.messages).strip()


def _normalise(record: Record) -> list[dict[str, str]]:
    """Every message through the simplified-Chinese conversion."""
    from curators.text_rules import to_simplified

    return [{"role": m["role"], "content": to_simplified(m["content"])} for m in record.messages]


class _Clip:
    """CLIP scores of caption records (curators/clip_score.py), a threshold or a quantile of them."""

    def __init__(self, cfg: CurateConfig, recipe: Recipe) -> None:
        from curators.clip_score import ClipScorer, ScoreCache

        self.cfg = cfg.clip
        self.scorer = ClipScorer.load(self.cfg.path)
        self.cache = ScoreCache(self.cfg.cache_path)
        self.threshold = self.cfg.threshold
        self.scores: list[tuple[str, str, float]] = []
        """(image, text, score) of every caption scored, for the report."""

    def prepare(self, records: Iterator[Record], image_sha: dict[str, str]) -> None:
        from curators.clip_score import score_pairs

        pairs = [(r.image, image_sha[r.image], text_of(r)) for r in records  # one-image captions only
                 if r.task == "caption" and isinstance(r.image, str) and r.image in image_sha]
        scores = score_pairs(self.scorer, self.cache, [(sha, text, _loader(image)) for image, sha, text in pairs],
                             self.cfg.batch_size)
        self.scores = [(image, text, float(s)) for (image, _, text), s in zip(pairs, scores)]
        if self.cfg.quantile is not None and scores:
            self.threshold = float(np.quantile(np.asarray(scores, dtype=np.float64), self.cfg.quantile))
        self._by_pair = {(image, text): s for image, text, s in self.scores}

    def check(self, records: list[Record], out: list[TextVerdict], facts: dict, images: dict) -> None:
        for r, tv in zip(records, out):
            one = r.task == "caption" and isinstance(r.image, str)
            score = self._by_pair.get((r.image, text_of(r))) if one else None
            if score is None or tv.reason is not None:
                continue
            tv.figures["clip"] = round(score, 4)
            if self.threshold is not None and score < self.threshold:
                detail = f"CLIP score {score:.3f} < {self.threshold:.3f}"
                if self.cfg.mode == "filter":
                    tv.reason, tv.detail = "low_clip_score", detail
                else:
                    tv.flags.append("low_clip_score")


def _loader(path: str):
    def load() -> Image.Image:
        with Image.open(path) as im:
            return im.convert("RGB")
    return load
