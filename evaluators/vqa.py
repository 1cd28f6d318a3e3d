"""VQAv2 accuracy, exact match and their breakdowns by question and answer type.

    vqa_accuracy("Two", ["2"] * 3 + ["3"] * 7)  # 0.9: three of ten annotators said "2"

Numbers must be comparable with published VQAv2 results, so English answers are normalised as the
official evaluation script does (`vqaEval.py` of the VQA API), rule for rule:

- newlines and tabs become spaces, the ends are stripped (after NFKC, which is ours: full-width
  letters and digits from Chinese keyboards become ASCII);
- punctuation ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when the text has it next to
  a space or has a comma between digits ("10,000" -> "10000", "yes, sir" -> "yes sir"), else it
  becomes a space ("yes/no" -> "yes no"); ``:``, ``'`` and other marks are kept, as there;
- a period is deleted unless a digit follows ("3.5" stays, "cat." -> "cat"; the script's
  lookbehind is malformed, so this is what it does);
- the text is lower-cased and split into words; number words zero..ten become digits ("none" -> "0"
  too, as there); the articles a, an, the are dropped; apostrophe-less contractions get their
  apostrophe back ("dont" -> "don't", `CONTRACTIONS`).

Differences, on purpose: the script normalises ground-truth answers only for punctuation and only
when annotators disagree (VQAv2's answers were already normalised when collected); here both sides
get the full normalisation, so our own JSONL answers may be written freely ("Two dogs." matches
"2 dogs"). The script's four capitalised contraction keys ("Im", "Ive", "Id've", "I'dve") can never
match a lower-cased word there, so they are left out. (Its period rule's ``re.UNICODE`` is passed
as a count, 32 periods at most; answers are never that long, so there is no limit here.)

Chinese answers (any CJK character in the text) are compared character by character instead: NFKC,
lower case, whitespace and punctuation (CJK and ASCII, `unicodedata` category P, plus ASCII
symbols) removed, so "红色。" == "红色" and "红 色" == "红色"; a period between digits stays ("3.5米").
The VQA rules above would do nothing useful there (no spaces, no articles).

Accuracy is the official one: for each annotator left out, min(#other annotators who gave the
prediction / 3, 1), averaged over the annotators. VQAv2 has ten answers per question, so that is the
mean over the ten 9-answer subsets. Fewer answers (our own splits) are allowed: one answer is exact
match, and with n < 4 answers full credit needs all n - 1 others (the bar is min(3, n - 1)), so a
two-answer question both annotators agree on can still score 1; from four answers on the formula is
exactly the official one.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import defaultdict
from collections.abc import Iterable

CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "isnt": "isn't", "itd": "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am",
    "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've",
    "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",  # sic, as in the official table
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've", "somebodyll": "somebody'll",
    "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's",
    "somethingd": "something'd", "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd", "thered've": "there'd've",
    "there'dve": "there'd've", "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're",
    "theyve": "they've", "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's", "whereve": "where've",
    "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's", "wont": "won't",
    "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've",
    "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've",
    "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}
"""The official script's contraction table (keys as they can match: lower case)."""

NUMBER_WORDS: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
"""The official script's punctuation, in its order (the order does not change the result)."""

_DIGIT_COMMA = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"\.(?!\d)")
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3040-\u30ff\u3100-\u312f\u31a0-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]"
)
"""CJK ideographs (and radicals, extensions, compatibility forms), kana, bopomofo, Hangul syllables."""


def has_cjk(text: str) -> bool:
    """Whether `text` has any CJK character (then it is compared character by character)."""
    return _CJK.search(text) is not None


def is_cjk(char: str) -> bool:
    return _CJK.fullmatch(char) is not None


def is_punctuation(char: str) -> bool:
    """Unicode punctuation (CJK's 。，、「」《》… included) or an ASCII punctuation mark or symbol."""
    return char in string.punctuation or unicodedata.category(char).startswith("P")


def normalize_answer(text: str) -> str:
    """`text` as the VQA evaluation compares it (the module docstring has the rules)."""
    text = unicodedata.normalize("NFKC", text)
    if has_cjk(text):
        return _normalize_chars(text)
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


def _normalize_chars(text: str) -> str:
    text = text.lower()
    kept = []
    for i, ch in enumerate(text):
        if ch.isspace():
            continue
        if ch == "." and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit():
            kept.append(ch)
        elif not is_punctuation(ch):
            kept.append(ch)
    return "".join(kept)


def _punctuation(text: str) -> str:
    delete = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in PUNCTUATION:
        if delete or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def exact_match(prediction: str, answer: str) -> bool:
    """`prediction` equals `answer` after `normalize_answer` on both."""
    return normalize_answer(prediction) == normalize_answer(answer)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The VQA accuracy of `prediction` against the annotators' `answers` (0..1; module docstring)."""
    if not answers:
        raise ValueError("vqa_accuracy: no reference answers; give at least one (VQAv2 has ten per question)")
    pred = normalize_answer(prediction)
    matches = [normalize_answer(a) == pred for a in answers]
    if len(matches) == 1:
        return float(matches[0])
    bar = min(3, len(matches) - 1)
    total = sum(matches)
    return sum(min(1.0, (total - m) / bar) for m in matches) / len(matches)


def summarise(rows: Iterable[dict]) -> dict:
    """Overall accuracy and exact match of scored rows (`accuracy`: float, `exact`: bool, optional
    `question_type` and `answer_type`), and both by question type and by answer type.

    Returns {"n", "accuracy", "exact_match", "by_question_type": {type: {"n", "accuracy",
    "exact_match"}}, "by_answer_type": {...}}; rows without a type are left out of that breakdown.
    """
    rows = list(rows)
    for i, row in enumerate(rows):
        if "accuracy" not in row or "exact" not in row:
            raise ValueError(f"summarise: row {i} has no 'accuracy' or 'exact' (keys: {sorted(row)}); "
                             "score it with vqa_accuracy and exact_match first")
    out = _figures(rows)
    for key in ("question_type", "answer_type"):
        groups: dict[str, list[dict]] = defaultdict(list)
        for row in rows:
            if row.get(key) not in (None, ""):
                groups[str(row[key])].append(row)
        out[f"by_{key}"] = {name: _figures(group) for name, group in sorted(groups.items())}
    return out


def _figures(rows: list[dict]) -> dict:
    n = len(rows)
    return {"n": n, "accuracy": sum(float(r["accuracy"]) for r in rows) / max(1, n),
            "exact_match": sum(bool(r["exact"]) for r in rows) / max(1, n)}
