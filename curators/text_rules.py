"""Caption and text checks that keep junk out of translation: every check is a reason code.

Translating a record costs money and a bad source text only makes a bad target text, so the
`curate` step drops what is not worth translating before it is sent: file names and stock-photo
boilerplate instead of a caption, bare URLs, keyboard spam, texts too short to say anything or
too long to be a caption, texts not in the language the source claims, and (for Chinese sources)
traditional script where simplified is wanted. This module works on plain strings; the step
maps records onto it.

Checks, in the order they run; the first one that fails is the verdict (reason code in brackets):

1. the text is mostly URLs [`url_only`]: the characters inside URLs (`http(s)://`, `www.`, or a
   bare `example.com/...`) are more than `max_url_share` of the non-blank text.
2. the text is boilerplate [`boilerplate`]: one of `boilerplate` patterns matches (stock-photo and
   photo-credit lines, "click here", "image may contain", "no description", "untitled",
   copyright notices, "下载", "点击查看", "图片来源", "版权所有", and captions that are a camera
   file name: `IMG_1234.JPG`, `DSC0001`). Naming what the text *is* beats naming its length, so
   these two come before the length checks ("untitled" is also too short).
3. its length [`too_short`, `too_long`], in the units of `expected_lang`, see `length_of`:
   zh/ja/ko count CJK characters (kana, hangul included) plus one per Latin word or number in
   between (`iPhone 手机` is 3); every other language counts characters, whitespace runs counted
   as one. Characters, not words, for alphabetic languages: no tokenisation to argue about, and a
   length in characters tracks a token budget. Defaults: at least 8 characters (`Two dogs`; `a
   dog` is too short) or 4 CJK characters (`一只小猫`), at most 2,000 characters or 1,000 CJK
   characters (a long LLaVA-style description is about 1,000 characters).
4. one character repeated more than `max_repeat_run` times in a row [`repeated_chars`]:
   "soooooooo", "!!!!!!!!", "哈哈哈哈哈哈哈哈". Digits and layout characters (`repeat_ignored`:
   `.` `-` `_` `=` `*` `#` `…` `·`, i.e. ellipses, rules, blanks, markdown) never count.
5. one word n-gram (for CJK, character n-gram) covers more than `max_repeated_ngram_share` of
   the text's word characters while occurring at least `min_ngram_repeats` times
   [`repeated_ngrams`]: "buy now buy now buy now", "好看好看好看好看".
6. the text is in another language [`wrong_language`]: lingua puts another language on top and
   gives `expected_lang` a confidence below `min_lang_confidence`. Texts with too little
   evidence (fewer than `min_lang_words` words *and* fewer than `min_lang_cjk` CJK characters,
   e.g. "Pizza Margherita", "一只猫") are never judged: on two words lingua is a coin toss
   ("Pizza Margherita" -> Italian 0.86, "a red bus" -> English 0.22), and their `lang` is None.
   The threshold is on the *expected* language's confidence, not the winner's: short English
   captions often come out English 0.3-0.6 with German or Italian close behind ("A laptop computer
   on a wooden desk." -> German 0.36, English 0.33), while French, German, Spanish or Indonesian
   captions of the same length give English 0.00-0.08.
7. traditional Chinese where `expected_lang` is zh [`traditional_chinese`, with
   `traditional="reject"`]: OpenCC's `t2s` conversion changes at least `min_traditional_share`
   of the CJK characters. With `"normalise"` (the default) the text passes and the verdict's
   `normalised` holds the simplified text; with `"keep"` it passes unchanged. `t2s` leaves
   simplified text as it is (it maps traditional forms only), so a share of 10% is a wide margin:
   a traditional caption changes 30-50% ("這是一隻貓在沙發上睡覺": 5 of 11).

`expected_lang=None` runs checks 1-5 only, lengths by the `*` limits in characters. A check is
switched off by its limit (`boilerplate=()`, `max_repeat_run` and `max_*_chars` huge,
`max_repeated_ngram_share=1.0`) or, for URLs, `url_only=False`. `to_simplified` is the same
conversion, for the other texts of a record whose caption was normalised.

Language identification: lingua, restricted to `TextRules.languages` (12 languages by default),
one detector per language set, built on first use and kept (`_detector`). lingua loads a
language's n-gram models lazily, the first time a text of its script needs them, and keeps them
for the life of the process. Measured here (lingua-language-detector 2.1.1, Python 3.11, a shared
2-core machine, no network; tests/test_curate_text_rules.py prints the batch time again):

- first Latin-script text: ~1.1 s, loading the models of the Latin-script languages of the default
  set; the process grows by ~195 MB (18 -> 213 MB resident) and keeps it. Chinese, Japanese,
  Korean and Russian texts are decided by their script and load nothing more (+2 MB).
  `with_preloaded_language_models()` would take ~2.3 s and ~260 MB at build time, for every
  language whether a run needs it or not: we stay lazy. `with_low_accuracy_mode()` (trigrams
  only, ~10 MB) is not used: its confidences are on another scale (a short English caption
  scores 1.00, not 0.78), which `min_lang_confidence` is not tuned for.
- afterwards, 1,000 short English captions (5-12 words): lingua alone ~0.08 s one by one
  (~0.08 ms a text; the parallel call is no faster on 2 cores at this size); all checks, 0.12 s
  through `check_text` in a loop and 0.10 s through `check_texts`; 1,000 Chinese captions with
  the traditional check 0.06 s.

Both packages ship their data in the wheel (lingua's models inside its extension module,
OpenCC's dictionaries under `opencc/clib/share/opencc`); nothing is downloaded at run time.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

import opencc
from lingua import ConfidenceValue, IsoCode639_1, Language, LanguageDetector, LanguageDetectorBuilder

__all__ = [
    "BOILERPLATE_PATTERNS", "DEFAULT_LANGUAGES", "TextRules", "TextVerdict", "check_text", "check_texts",
    "length_of", "to_simplified",
]

TraditionalMode = Literal["normalise", "reject", "keep"]

DEFAULT_LANGUAGES: tuple[str, ...] = ("en", "zh", "ja", "ko", "fr", "de", "es", "ru", "pt", "it", "vi", "id")
"""The languages lingua chooses among: the ones an image-text source is likely to hold. A smaller
set is faster and less often wrong; a language outside it is reported as its nearest member."""

_CJK_LANGS = frozenset({"zh", "ja", "ko"})
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")  # letters only; run on text with CJK blanked
_NUMBER_RE = re.compile(r"\d+(?:[.,:]\d+)*")
_TLDS = r"com|net|org|edu|gov|info|biz|io|co|me|tv|ly|cn|hk|tw|jp|kr|uk|de|fr|es|it|ru|br|in|au|ca|nl|eu"
_URL_RE = re.compile(
    rf"(?:(?:https?|ftp)://|www\.)\S+|\b[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9-]+)*\.(?:{_TLDS})\b(?:/\S*)?",
    re.I,
)

BOILERPLATE_PATTERNS: tuple[str, ...] = (
    # (regular expression, searched case-insensitively anywhere in the text unless anchored)
    r"\bstock (?:photo|image|picture|footage|illustration|vector)s?\b",
    r"\bimage may contain\b",
    r"\bclick (?:here|to (?:view|enlarge|see|download))\b",
    r"\bview (?:larger|full[- ]size|full image)\b",
    r"^\W*(?:no|without) (?:description|caption|alt(?:ernative)? text)\b",
    r"^\W*untitled\b",
    r"(?:^|[|(/:·•\-–—]\s*)photo(?:graph)?\s*(?:by|credits?|courtesy)\b",
    r"\bcopyright\b|©|\(c\)\s*\d{4}",
    r"\ball rights reserved\b",
    r"下载|下載|点击查看|點擊查看|图片来源|圖片來源|版权所有|版權所有",
    # a caption that is a file name: any name ending in an image extension, or a camera's
    # numbered name with or without one (IMG_1234.JPG, DSC0001, PXL_20210101_123456789)
    r"^\s*[\w\-. ()]+\.(?:jpe?g|png|gif|bmp|webp|tiff?|heic|svg)\s*$",
    r"^\s*(?:IMG|DSC[NF]?|DCIM|PXL|MVIMG|VID|GOPR|DJI|_MG|SAM|P)[_-]?\d{3,}[\w-]*(?:\.\w{2,4})?\s*$",
    r"^\s*(?:image|img|photo|pic|picture|screenshot|scan)[\s_-]*\d[\d\s_.:-]*$",
)
"""Shipped boilerplate: what web alt-text and photo-site captions say instead of a description.
`photo by` counts only at the start or after a separator ("Photo by Jane Doe", "Sunset | photo
by Jane"), so "a photo by the lake" passes. Traditional forms of the Chinese phrases are listed
because this check runs before traditional text is normalised."""


@dataclass(frozen=True, slots=True)
class TextRules:
    """What `check_text` accepts. Every limit is configurable; the defaults suit captions."""

    min_chars: int | Mapping[str, int] = field(default_factory=lambda: {"zh": 4, "ja": 4, "ko": 4, "*": 8})
    """Minimum length in `length_of` units: per language (`*`: every other language, and texts
    checked without an expected language), or one number for all."""
    max_chars: int | Mapping[str, int] = field(default_factory=lambda: {"zh": 1000, "ja": 1000, "ko": 1000, "*": 2000})
    """Maximum length in `length_of` units, as `min_chars`."""
    max_repeat_run: int = 5
    """The longest run of one character allowed: "Zzzzz" passes, "soooooo" does not."""
    repeat_ignored: str = ".-_=*#…·"
    """Characters whose runs are layout, not spam (digits never count either)."""
    max_repeated_ngram_share: float = 0.5
    """The share of the text's word characters one repeated n-gram may cover."""
    min_ngram_repeats: int = 3
    """An n-gram counts as repeated from this many occurrences ("very very good" passes)."""
    ngram_sizes: tuple[int, ...] = (1, 2, 3, 4)
    boilerplate: tuple[str, ...] = BOILERPLATE_PATTERNS
    """Regular expressions, searched case-insensitively."""
    url_only: bool = True
    """False: no `url_only` check."""
    max_url_share: float = 0.5
    """The share of non-blank characters URLs may take."""
    languages: tuple[str, ...] = DEFAULT_LANGUAGES
    """ISO 639-1 codes lingua chooses among; `expected_lang` must be one of them."""
    min_lang_confidence: float = 0.2
    """`wrong_language` when another language wins and the expected one scores below this."""
    min_lang_words: int = 3
    min_lang_cjk: int = 4
    """A text with fewer words than `min_lang_words` and fewer CJK characters than
    `min_lang_cjk` is never rejected on language: too little evidence."""
    traditional: TraditionalMode = "normalise"
    """For zh: `normalise` traditional text to simplified, `reject` it, or `keep` it as it is."""
    min_traditional_share: float = 0.1
    """Traditional when OpenCC t2s changes at least this share of the CJK characters."""

    def __post_init__(self) -> None:
        if self.traditional not in get_args(TraditionalMode):
            raise ValueError(f"TextRules.traditional: {self.traditional!r} is not one of {get_args(TraditionalMode)}")
        for code in self.languages:
            _iso(code, "TextRules.languages")
        for name in ("min_chars", "max_chars"):
            value = getattr(self, name)
            table = {"*": value} if isinstance(value, int) else value
            bad = {k: v for k, v in table.items() if not isinstance(v, int) or v < 0}
            if bad:
                raise ValueError(f"TextRules.{name}: limits must be non-negative integers, got {bad}")
        if not self.ngram_sizes or min(self.ngram_sizes) < 1:
            raise ValueError(f"TextRules.ngram_sizes: sizes must be >= 1, got {self.ngram_sizes}")
        for pattern in self.boilerplate:
            _compile(pattern)

    def limit(self, name: Literal["min_chars", "max_chars"], lang: str | None) -> int:
        """The `min_chars` / `max_chars` entry for `lang`, else its `*` entry."""
        table = getattr(self, name)
        if isinstance(table, int):
            return table
        if lang in table:
            return table[lang]
        if "*" in table:
            return table["*"]
        raise ValueError(f"TextRules.{name} has no entry for {lang or 'texts of no expected language'!r}"
                         " and no '*' default")


@dataclass(frozen=True, slots=True)
class TextVerdict:
    """The outcome for one text. `reason` None: it passed."""

    reason: str | None
    detail: str
    lang: str | None = None
    """The language lingua put first (ISO 639-1); None where the language was not judged (too
    little evidence, or an earlier check failed) or no language of `TextRules.languages` fits."""
    lang_confidence: float | None = None
    normalised: str | None = None
    """The text to use instead (simplified Chinese); None when the text stays as it is."""

    @property
    def ok(self) -> bool:
        return self.reason is None


def check_text(text: str, expected_lang: str | None, rules: TextRules) -> TextVerdict:
    """The first failing check of `text` (the order is in the module docstring), or a pass.
    `expected_lang` None: no language and no traditional-script check, lengths by the `*` limits."""
    lang = _expected(expected_lang, rules)
    early = _surface_checks(text, lang, rules)
    if early is not None:
        return early
    if lang is None or not _enough_evidence(text, rules):
        return _finish(text, lang, rules, None)
    return _finish(text, lang, rules, _detector(rules.languages).compute_language_confidence_values(text))


def check_texts(texts: Sequence[str], expected_lang: str | None, rules: TextRules) -> list[TextVerdict]:
    """`check_text` for many texts; lingua scores those that reach the language check in one
    parallel call (`compute_language_confidence_values_in_parallel`)."""
    lang = _expected(expected_lang, rules)
    early = [_surface_checks(text, lang, rules) for text in texts]
    judged = [i for i, verdict in enumerate(early)
              if verdict is None and lang is not None and _enough_evidence(texts[i], rules)]
    scores: dict[int, list[ConfidenceValue]] = {}
    if judged:
        detector = _detector(rules.languages)
        scores = dict(zip(judged, detector.compute_language_confidence_values_in_parallel([texts[i] for i in judged])))
    return [
        verdict if verdict is not None else _finish(text, lang, rules, scores.get(i))
        for i, (text, verdict) in enumerate(zip(texts, early))
    ]


def length_of(text: str, lang: str | None) -> int:
    """A text's length in the units `min_chars` / `max_chars` use for `lang` (module docstring);
    characters where `lang` is None."""
    if lang is not None and _base(lang) in _CJK_LANGS:
        rest = _CJK_RE.sub(" ", text)
        return len(_CJK_RE.findall(text)) + len(_WORD_RE.findall(rest)) + len(_NUMBER_RE.findall(rest))
    return len(" ".join(text.split()))


# --- the checks, in order -------------------------------------------------------------------


def to_simplified(text: str) -> str:
    """`text` through OpenCC `t2s`: traditional Chinese characters and phrases to simplified ones."""
    return _t2s().convert(text)


def _surface_checks(text: str, lang: str | None, rules: TextRules) -> TextVerdict | None:
    """Checks 1-5, which need no language model; None when all pass."""
    for check in (_url_only, _boilerplate, _length, _repeated_chars, _repeated_ngrams):
        found = check(text, lang, rules)
        if found is not None:
            return TextVerdict(found[0], found[1])
    return None


def _finish(text: str, lang: str | None, rules: TextRules, confidences: list[ConfidenceValue] | None) -> TextVerdict:
    """Checks 6 and 7, given lingua's scores (None: not judged)."""
    top_lang, top_value = None, None
    if confidences and lang is not None:
        top = confidences[0]
        top_lang, top_value = (_code(top.language) if top.value > 0 else None), top.value
        wrong = _wrong_language(lang, confidences, rules)
        if wrong is not None:
            return TextVerdict("wrong_language", wrong, top_lang, top_value)
    if lang == "zh" and rules.traditional != "keep":
        simplified, changed, total = _traditional(text)
        if total and changed / total >= rules.min_traditional_share:
            share = (f"{changed} of {total} CJK characters change under OpenCC t2s"
                     f" ({changed / total:.0%} >= {rules.min_traditional_share:.0%})")
            if rules.traditional == "reject":
                return TextVerdict("traditional_chinese", share, top_lang, top_value)
            detail = f"traditional Chinese normalised to simplified: {share}"
            return TextVerdict(None, detail, top_lang, top_value, simplified)
    if lang is None or confidences:
        return TextVerdict(None, "passed", top_lang, top_value)
    return TextVerdict(None, "passed (too short to judge its language)")


def _url_only(text: str, lang: str | None, rules: TextRules) -> tuple[str, str] | None:
    if not rules.url_only:
        return None
    total = len("".join(text.split()))
    urls = sum(len(m.group()) for m in _URL_RE.finditer(text))
    if total and urls / total > rules.max_url_share:
        return "url_only", f"URLs are {urls} of {total} characters ({urls / total:.0%} > {rules.max_url_share:.0%})"
    return None


def _boilerplate(text: str, lang: str | None, rules: TextRules) -> tuple[str, str] | None:
    for pattern in rules.boilerplate:
        m = _compile(pattern).search(text)
        if m:
            return "boilerplate", f"matches {m.group().strip()[:60]!r} (pattern {pattern!r})"
    return None


def _length(text: str, lang: str | None, rules: TextRules) -> tuple[str, str] | None:
    n = length_of(text, lang)
    unit = "CJK characters and words" if lang in _CJK_LANGS else "characters"
    low, high = rules.limit("min_chars", lang), rules.limit("max_chars", lang)
    if n < low:
        return "too_short", f"{n} {unit} < min {low}{_for(lang)}"
    if n > high:
        return "too_long", f"{n} {unit} > max {high}{_for(lang)}"
    return None


def _repeated_chars(text: str, lang: str | None, rules: TextRules) -> tuple[str, str] | None:
    longest, char, run, prev = 0, "", 0, ""
    for c in text:
        run = run + 1 if c == prev else 1
        prev = c
        if run > longest and not (c.isspace() or c.isdigit() or c in rules.repeat_ignored):
            longest, char = run, c
    if longest > rules.max_repeat_run:
        return "repeated_chars", f"{char!r} {longest} times in a row > max {rules.max_repeat_run}"
    return None


def _repeated_ngrams(text: str, lang: str | None, rules: TextRules) -> tuple[str, str] | None:
    tokens = _tokens(text)
    total = sum(len(t) for t in tokens)
    for n in sorted(rules.ngram_sizes):
        if total == 0 or len(tokens) < n * rules.min_ngram_repeats:
            break
        counts = Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))
        gram, count = counts.most_common(1)[0]
        if count < rules.min_ngram_repeats:
            continue
        share = _covered(tokens, gram) / total
        if share > rules.max_repeated_ngram_share:
            shown = ("" if _CJK_RE.fullmatch(gram[0]) else " ").join(gram)
            return "repeated_ngrams", (f"{shown!r} x{count} covers {share:.0%} of the text"
                                       f" > {rules.max_repeated_ngram_share:.0%}")
    return None


def _wrong_language(lang: str, confidences: list[ConfidenceValue], rules: TextRules) -> str | None:
    top = confidences[0]
    mine = next((c.value for c in confidences if _code(c.language) == lang), 0.0)
    if (_code(top.language) == lang and top.value > 0) or mine >= rules.min_lang_confidence:
        return None
    if top.value == 0:  # lingua gives every language 0 to a script none of them is written in
        return f"expected {lang}, detected none of TextRules.languages (every confidence 0)"
    return (f"expected {lang}, detected {_code(top.language)} (confidence {top.value:.2f});"
            f" {lang} confidence {mine:.2f} < {rules.min_lang_confidence}")


def _traditional(text: str) -> tuple[str, int, int]:
    """(the t2s conversion, how many CJK characters it changed, how many there are)."""
    simplified = to_simplified(text)
    before, after = Counter(_CJK_RE.findall(text)), Counter(_CJK_RE.findall(simplified))
    return simplified, sum((before - after).values()), sum(before.values())


# --- helpers --------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    """Lower-cased words and each CJK character on its own, in text order."""
    return [w.lower() for w in _WORD_RE.findall(_CJK_RE.sub(r" \g<0> ", text))]


def _covered(tokens: list[str], gram: tuple[str, ...]) -> int:
    """Word characters inside the occurrences of `gram` (overlapping ones counted once)."""
    n, hit = len(gram), [False] * len(tokens)
    for i in range(len(tokens) - n + 1):
        if tuple(tokens[i:i + n]) == gram:
            hit[i:i + n] = [True] * n
    return sum(len(t) for t, h in zip(tokens, hit) if h)


def _enough_evidence(text: str, rules: TextRules) -> bool:
    cjk = len(_CJK_RE.findall(text))
    words = len(_WORD_RE.findall(_CJK_RE.sub(" ", text)))
    return words >= rules.min_lang_words or cjk >= rules.min_lang_cjk


def _base(lang: str) -> str:
    return lang.strip().lower().replace("_", "-").split("-")[0]


def _for(lang: str | None) -> str:
    return f" for {lang}" if lang else ""


def _expected(expected_lang: str | None, rules: TextRules) -> str | None:
    if expected_lang is None:
        return None
    lang = _base(expected_lang)
    if lang not in {_base(code) for code in rules.languages}:
        raise ValueError(f"expected_lang {expected_lang!r} is not one of TextRules.languages {rules.languages}")
    return lang


def _iso(code: str, where: str) -> IsoCode639_1:
    try:
        return IsoCode639_1.from_str(_base(code))
    except ValueError:
        raise ValueError(f"{where}: {code!r} is not an ISO 639-1 code lingua knows") from None


def _code(language: Language) -> str:
    return language.iso_code_639_1.name.lower()


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern, re.I)
    except re.error as exc:
        raise ValueError(f"TextRules.boilerplate: pattern {pattern!r} is not a regular expression: {exc}") from None


@functools.lru_cache(maxsize=8)
def _detector(languages: tuple[str, ...]) -> LanguageDetector:
    """One lingua detector per language set, built on first use; models load lazily inside it."""
    codes = [_iso(code, "TextRules.languages") for code in dict.fromkeys(languages)]
    if len(codes) < 2:
        raise ValueError(f"TextRules.languages: lingua needs at least 2 languages, got {languages}")
    return LanguageDetectorBuilder.from_iso_codes_639_1(*codes).build()


@functools.lru_cache(maxsize=1)
def _t2s() -> opencc.OpenCC:
    return opencc.OpenCC("t2s")
