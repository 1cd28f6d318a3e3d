"""Caption metrics: BLEU-4 and CIDEr-D over a set of images, with pycocoevalcap's pure-Python scorers.

    caption_scores({"1": "一只猫坐在垫子上"}, {"1": ["一只猫坐在垫子上。", "垫子上有一只猫"]})

The COCO caption evaluation tokenises with Stanford's PTBTokenizer (Java) and that would also cut
Chinese badly, so `tokenize` is ours and the scorers get space-joined tokens:

- auto: text with any CJK character -> each CJK character is a token, a run of other letters or
  digits ("NBA", "T", "2") is one token, whitespace and punctuation are dropped; other text ->
  as `whitespace`;
- chars: every character that is not whitespace or punctuation is a token (also digits and Latin
  letters);
- whitespace: lower case, apostrophes deleted ("don't" -> "dont"), other punctuation replaced by a
  space, split on whitespace.

All three start with NFKC (full-width forms -> ASCII) and lower-case. Chinese character n-grams are
the usual unit for Chinese caption metrics (no word segmenter, so scores do not depend on one).

Which scorers: `Bleu(4)` is corpus BLEU with the "closest" reference length; `bleu_4` is its
4-gram figure. `Cider()` is CIDEr-D, whatever its name says (read in pycocoevalcap 1.2's
`cider_scorer.py`): tf-idf n-gram vectors (n = 1..4) with the hypothesis clipped to the reference
counts (min), a Gaussian length penalty (sigma 6), the mean over n, the mean over references, x 10,
and no stemming: the CIDEr-D of Vedantam et al. that the COCO server reports as "CIDEr". Its
document frequencies come from the references of the images scored, so it needs a corpus: a
handful of images at least (with one image every n-gram's idf is 0 and so is the score), and
scores from different sets of images are not comparable.
"""

from __future__ import annotations

import unicodedata
from typing import Literal

from evaluators.vqa import has_cjk, is_cjk, is_punctuation

Segmenter = Literal["auto", "chars", "whitespace"]


def tokenize(text: str, segmenter: Segmenter = "auto") -> str:
    """`text` as space-separated tokens for the scorers (the module docstring has the rules)."""
    text = unicodedata.normalize("NFKC", text).lower()
    if segmenter == "chars":
        return " ".join(ch for ch in text if not ch.isspace() and not is_punctuation(ch))
    if segmenter == "whitespace" or (segmenter == "auto" and not has_cjk(text)):
        return _words(text)
    if segmenter == "auto":
        return _mixed(text)
    raise ValueError(f"tokenize: unknown segmenter {segmenter!r}; use 'auto', 'chars' or 'whitespace'")


def _words(text: str) -> str:
    text = text.replace("'", "").replace("\u2019", "")
    return " ".join("".join(" " if is_punctuation(ch) else ch for ch in text).split())


def _mixed(text: str) -> str:
    tokens: list[str] = []
    run = ""
    for ch in text:
        if ch.isspace() or is_punctuation(ch) or is_cjk(ch):
            if run:
                tokens.append(run)
                run = ""
            if is_cjk(ch):
                tokens.append(ch)
        else:
            run += ch
    if run:
        tokens.append(run)
    return " ".join(tokens)


def caption_scores(predictions: dict[str, str], references: dict[str, list[str]],
                   segmenter: Segmenter = "auto") -> dict:
    """BLEU-4 and CIDEr-D of `predictions` (image id -> caption) against `references` (image id ->
    captions), over the predicted images; references of other ids are not used.

    Returns {"bleu_4": float, "cider_d": float, "n": number of images}.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    _check(predictions, references)
    res = {str(i): [tokenize(p, segmenter)] for i, p in predictions.items()}
    gts = {str(i): [tokenize(r, segmenter) for r in references[i]] for i in predictions}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return {"bleu_4": float(bleu[3]), "cider_d": float(cider), "n": len(res)}


def _check(predictions: dict[str, str], references: dict[str, list[str]]) -> None:
    if not predictions:
        raise ValueError("caption_scores: no predictions to score")
    missing = [i for i in predictions if i not in references]
    if missing:
        shown = ", ".join(map(repr, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise ValueError(f"caption_scores: {len(missing)} predicted image id(s) have no references: {shown}; "
                         "give references for every predicted id (ids are compared as given, '1' != 1)")
    empty = [i for i in predictions if isinstance(references[i], str) or not references[i]]
    if empty:
        raise ValueError(f"caption_scores: references of image id(s) {', '.join(map(repr, empty[:10]))} are "
                         "not a non-empty list of captions; give each id a list of at least one caption")
    if len({str(i) for i in predictions}) != len(predictions):
        raise ValueError("caption_scores: two image ids are equal as strings (1 and '1'); use one type of id")
