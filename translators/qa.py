"""Quality checks on one translated segment. Every check names the reason it failed.

Checks (reason codes in brackets):
- the output is there and is not a refusal or a note about the task [`empty`, `refusal`, `meta_text`]
- protected spans (placeholders, tags by their exact text, URLs, code...) survive exactly: none
  lost, doubled, invented or moved [`mask_lost`, `mask_duplicated`, `mask_added`, `mask_moved`];
  numbers are the same numbers however written (`10cm` -> `10厘米`, `1,000` -> `1000`, `1st` ->
  `第一`; translators/numbers.py) [`numbers_changed`]
- it is translated: not an echo, enough CJK characters, no English sentence left
  [`untranslated`, `cjk_ratio`, `english_left`] (CJK targets only). Names and codes a translation
  may keep as they are (`OK`, `TV`, `iPhone`, `A380`: written as no ordinary word is) do not count
  as English left; a segment with nothing else (`OK.` -> `OK。`) may stay as it is, but must not
  gain English.
- its length is plausible [`length_ratio`]; a one-word VQA answer stays short [`short_answer_too_long`]
- it is not wrapped in quotes the source did not have [`quoted`]
- glossary terms found in the source appear as their given translation [`glossary`]

The checks run on the final text (spans restored), so a translation from memory is held to
the same rules as one fresh from a model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from translators.config import QAConfig
from translators.numbers import compare as compare_numbers
from translators.placeholders import MASK_RE, Span, iter_spans
from translators.protocol import SegmentKind, Verdict

_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af]")
_LATIN_RE = re.compile(r"[A-Za-z]")
_ENGLISH_RUN_RE = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*(?:[\s,;:]+[A-Za-z]+(?:['’-][A-Za-z]+)*){3,}")
_TOKEN_RE = re.compile(r"[A-Za-z0-9]+(?:[-.&'+][A-Za-z0-9]+)*\+*")
_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_ORDERED_KINDS = {"placeholder", "tag"}
_QUOTES = {'"': '"', "“": "”", "「": "」", "『": "』", "'": "'", "‘": "’"}
_MIN_CHARS_FOR_LENGTH_RATIO = 12

# (pattern in the translation, pattern in the source that makes it legitimate, reason)
_MARKERS: list[tuple[re.Pattern, re.Pattern, str]] = [
    (re.compile(p, re.I), re.compile(g, re.I), reason)
    for p, g, reason in [
        (r"作为一?个?(AI|人工智能)|AI\s*语言模型|\bas an AI\b|\blanguage model\b", r"\bAI\b|artificial|language model", "refusal"),
        (r"我(无法|不能)(翻译|提供|完成)|\bI (cannot|can't|am unable to)\b", r"\bcannot\b|\bcan't\b|unable", "refusal"),
        (r"^(抱歉|对不起)|\bI'?m sorry\b|\bI am sorry\b", r"\bsorry\b|apolog", "refusal"),
        (r"here(?:'s| is) (?:the|your) translation|^translation\s*[:：]|translated text", r"translat", "meta_text"),
        (r"以下是.{0,6}翻译|翻译如下|^(译文|翻译)\s*[:：]|[（(]注[:：]", r"translat|\bnote\b", "meta_text"),
    ]
]


@dataclass(frozen=True, slots=True)
class QARules:
    target_lang: str = "zh"
    min_cjk_ratio: float = 0.3
    min_length_ratio: float = 0.15
    max_length_ratio: float = 3.0
    max_short_answer_chars: int = 16
    glossary: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_config(cls, qa: QAConfig, target_lang: str, glossary: dict[str, str]) -> "QARules":
        return cls(target_lang, qa.min_cjk_ratio, qa.min_length_ratio, qa.max_length_ratio,
                   qa.max_short_answer_chars, dict(glossary))

    @property
    def cjk_target(self) -> bool:
        return self.target_lang.lower().split("-")[0] in {"zh", "ja", "ko"}


def check(source: str, translation: str | None, rules: QARules, kind: SegmentKind = "text") -> Verdict:
    """All failures of one segment, most telling first; `Verdict.passed()` if there are none."""
    if translation is None or not translation.strip():
        return Verdict.failed("empty", "no translation came back")
    src, dst = _Parsed.of(source), _Parsed.of(translation)
    found: list[tuple[str, str]] = []
    found += _markers(source, translation)
    found += _span_problems(src, dst)
    if rules.cjk_target:
        found += _untranslated(src, dst, rules)
    found += _length(src, dst, rules, kind)
    found += _quoted(source, translation)
    found += _glossary(source, translation, rules.glossary)
    if not found:
        return Verdict.passed()
    reasons = tuple(dict.fromkeys(reason for reason, _ in found))
    detail = "; ".join(f"{reason}: {text}" for reason, text in found)
    return Verdict(False, reasons, detail[:300])


@dataclass(frozen=True, slots=True)
class _Parsed:
    """A text with its protected spans found once, and what is left without them."""

    text: str
    spans: tuple[tuple[int, int, Span], ...]
    plain: str
    """The text without any protected span."""
    prose: str
    """The text without the spans compared exactly (URLs, code...): where numbers are compared."""

    @classmethod
    def of(cls, text: str) -> "_Parsed":
        found = tuple(iter_spans(text))
        plain, prose = _blank(text, found, lambda s: True), _blank(text, found, lambda s: s.kind != "number")
        return cls(text, found, MASK_RE.sub(" ", plain), MASK_RE.sub(" ", prose))


def _blank(text: str, found: tuple[tuple[int, int, Span], ...], which: Callable[[Span], bool]) -> str:
    """`text` with each span `which` accepts replaced by a space."""
    out, pos = [], 0
    for start, end, span in found:
        if which(span):
            out += [text[pos:start], " "]
            pos = end
    out.append(text[pos:])
    return "".join(out)


def _markers(source: str, translation: str) -> list[tuple[str, str]]:
    out = []
    for pattern, guard, reason in _MARKERS:
        m = pattern.search(translation.strip())
        if m and not guard.search(source):
            out.append((reason, f"found {m.group()!r}"))
    return out


def _span_problems(src: _Parsed, dst: _Parsed) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    src_count = Counter(s for _, _, s in src.spans if s.kind != "number")
    dst_count = Counter(s for _, _, s in dst.spans if s.kind != "number")
    for span in sorted(src_count | dst_count, key=lambda s: (s.kind, s.value)):
        have, want = dst_count[span], src_count[span]
        label = f"{span.kind} {span.value!r} x{want} in source, x{have} in translation"
        if have < want:
            out.append(("mask_lost", label))
        elif have > want:
            out.append(("mask_duplicated" if want else "mask_added", label))
    lost, added = compare_numbers(src.prose, dst.prose)
    if lost or added:
        out.append(("numbers_changed", f"lost {lost}, added {added}"))
    if not out and _placeholder_layout(src) != _placeholder_layout(dst):
        out.append(("mask_moved", f"placeholders {_placeholder_layout(src)} -> {_placeholder_layout(dst)}"))
    return out


def _placeholder_layout(parsed: _Parsed) -> tuple[bool, tuple[str, ...], bool]:
    """(starts with a placeholder, the order of placeholders and tags, ends with a placeholder):
    what `mask_moved` compares. Only placeholders (`<image>`) are tied to the edges: inline markup
    (`<a href="x">here</a> to see` -> `点击<a href="x">这里</a>查看`) moves with the words."""
    text = parsed.text
    found = [(start, end, s) for start, end, s in parsed.spans if s.kind in _ORDERED_KINDS]
    edges = [(start, end) for start, end, s in found if s.kind == "placeholder"]
    starts = bool(edges) and edges[0][0] == len(text) - len(text.lstrip())
    ends = bool(edges) and edges[-1][1] == len(text.rstrip())
    return starts, tuple(s.value for _, _, s in found), ends


def _untranslated(src: _Parsed, dst: _Parsed, rules: QARules) -> list[tuple[str, str]]:
    """The CJK share is taken over the letters a translation should have translated: names and
    codes kept from the source are left out, and so are glossary targets."""
    kept = _kept_tokens(src.plain)
    to_translate = bool(_WORD_RE.search(_without(src.plain, kept)))
    if to_translate and " ".join(src.text.split()).lower() == " ".join(dst.text.split()).lower():
        return [("untranslated", "translation equals the source")]
    plain = _without(dst.plain, kept)
    for target in rules.glossary.values():
        plain = plain.replace(target, " ")
    cjk, latin = len(_CJK_RE.findall(plain)), len(_LATIN_RE.findall(plain))
    out = []
    # nothing left to judge is a failure only where the source had something to translate
    if (to_translate or latin) and (cjk + latin == 0 or cjk / (cjk + latin) < rules.min_cjk_ratio):
        share = cjk / (cjk + latin) if cjk + latin else 0.0
        out.append(("cjk_ratio", f"CJK share {share:.2f} < {rules.min_cjk_ratio}"))
    m = _ENGLISH_RUN_RE.search(plain)
    if m:
        out.append(("english_left", f"English left: {m.group()[:60]!r}"))
    return out


def _kept_tokens(text: str) -> set[str]:
    """Tokens of a source its translation may keep as they are: names and codes, written as no
    ordinary word is: with a digit (`A380`, `GPT-4`, `10cm`), in mixed case (`iPhone`, `PlayStation`),
    or in capitals (`TV`, `OK`) where the text is not all capitals (`WHAT IS THIS` is shouting)."""
    tokens = _TOKEN_RE.findall(text)
    not_shouting = text != text.upper() or len(tokens) == 1
    kept = set()
    for tok in tokens:
        if len(tok) < 2 or tok.isdigit() or (tok.isalpha() and (tok.islower() or tok.istitle())):
            continue  # a number, or an ordinary word: `cat`, `The`
        if not tok.isalpha() and any(c.isdigit() for c in tok) and any(c.isalpha() for c in tok):
            kept.add(tok)  # A380, GPT-4, 10cm
        elif tok.isupper():
            if not_shouting:
                kept.add(tok)  # TV, OK
        elif any(c.isupper() for c in tok[1:]):
            kept.add(tok)  # iPhone, PlayStation, McDonald's
    return kept


def _without(text: str, tokens: set[str]) -> str:
    """`text` with every whole occurrence of `tokens` blanked."""
    for tok in sorted(tokens, key=len, reverse=True):
        text = re.sub(rf"(?<![A-Za-z0-9]){re.escape(tok)}(?![A-Za-z0-9])", " ", text)
    return text


def _length(src: _Parsed, dst: _Parsed, rules: QARules, kind: SegmentKind) -> list[tuple[str, str]]:
    n_src = len("".join(src.plain.split()))
    n_dst = len("".join(dst.plain.split()))
    if kind == "short_answer" and len("".join(dst.text.split())) > rules.max_short_answer_chars:
        return [("short_answer_too_long", f"{n_dst} chars > {rules.max_short_answer_chars} for a short answer")]
    if n_src < _MIN_CHARS_FOR_LENGTH_RATIO:
        return []
    ratio = n_dst / n_src
    if not rules.min_length_ratio <= ratio <= rules.max_length_ratio:
        bounds = f"[{rules.min_length_ratio}, {rules.max_length_ratio}]"
        return [("length_ratio", f"length ratio {ratio:.2f} outside {bounds}")]
    return []


def _quoted(source: str, translation: str) -> list[tuple[str, str]]:
    t, s = translation.strip(), source.strip()
    close = _QUOTES.get(t[:1])
    if close and len(t) > 1 and t.endswith(close) and s[:1] not in _QUOTES:
        return [("quoted", "the whole translation is wrapped in quotes")]
    return []


def _glossary(source: str, translation: str, glossary: dict[str, str]) -> list[tuple[str, str]]:
    out = []
    for term, target in glossary.items():
        if re.search(rf"(?<![A-Za-z]){re.escape(term)}(?![A-Za-z])", source, re.I) and target not in translation:
            out.append(("glossary", f"{term!r} must be translated as {target!r}"))
    return out


def glossary_terms_in(texts: list[str], glossary: dict[str, str]) -> dict[str, str]:
    """The glossary entries that occur in any of `texts`: all a request's prompt needs."""
    joined = "\n".join(texts)
    return {
        term: target for term, target in glossary.items()
        if re.search(rf"(?<![A-Za-z]){re.escape(term)}(?![A-Za-z])", joined, re.I)
    }
