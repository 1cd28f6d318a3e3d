"""Do a source and its translation hold the same numbers, however each writes them?

Digits are what must survive. Every run of digits in the source (`3`, `3.5`, `1,000`, the `10` of
`10cm`, the `1` of `1st`, the `380` of `A380`) must turn up in the translation with the same
value: in digits (`3.50`, `1000`, `10厘米`, `第1`), in digits with a scale (`1万` is 10,000,
`2.5亿`, `3 million`), or in Chinese numerals (`第一`, `三只`, `百分之五十`). In turn every run of
digits in the translation must stand for a number of the source, in digits or in English words
(`three cats` -> `3只猫`, `the second` -> `第2`). Numbers written as words never have to match
anything themselves: `一个` (a), `第一次` (for the first time) or `the red one` are ordinary words.

The sign and the number's role are not compared (`-5` and `5`, `10:30` is 10 and 30), and the
caller leaves out text that is compared exactly anyway (URLs, code, LaTeX, boxes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

_SCALES = {"thousand": 10**3, "k": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12,
           "百": 10**2, "千": 10**3, "万": 10**4, "亿": 10**8}
_DIGITS_RE = re.compile(
    r"(\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?|\d+(?:\.\d+)?)"  # 1,000.5 | 1000.5
    r"(?:\s?(thousand|million|billion|trillion|[kK](?![A-Za-z]))\b|([百千万亿]+))?"
)

_EN_SMALL = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen".split())}
_EN_SMALL.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})
_EN_SMALL.update({w: i for i, w in enumerate(
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split(), 1)})
_EN_BIG = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
_EN_WORD = "|".join(sorted({*_EN_SMALL, *_EN_BIG}, key=len, reverse=True))
_EN_RUN_RE = re.compile(rf"(?<![A-Za-z])(?:{_EN_WORD})(?:(?:[\s-]+(?:and\s+)?)(?:{_EN_WORD}))*(?![A-Za-z])", re.I)

_ZH_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_RUN_RE = re.compile(r"[零〇一二两三四五六七八九十百千万亿]+")


@dataclass(frozen=True, slots=True)
class Number:
    text: str
    """As written: `1,000`, `1万`, `three`, the `一` of `第一`."""
    value: Decimal
    """Its value as written, scale aside: `1,000` -> 1000, `1万` -> 1."""
    values: frozenset[Decimal]
    """What it may stand for: `value`, and `value` times the scale written after it."""


def digit_numbers(text: str) -> list[Number]:
    """Every run of digits, with a scale word or character that follows it (`1.5 million`, `3万`)."""
    out = []
    for m in _DIGITS_RE.finditer(text):
        value = Decimal(m.group(1).replace(",", ""))
        scale = _scale(m.group(2) or m.group(3) or "")
        out.append(Number(m.group(), value, frozenset({value, value * scale})))
    return out


def word_numbers(text: str) -> list[Number]:
    """Numbers written in English words (`twenty-one`, `second`) or Chinese numerals (`三百`, `两`)."""
    runs = [(m.group(), _english_value(m.group())) for m in _EN_RUN_RE.finditer(text)]
    runs += [(m.group(), _chinese_value(m.group())) for m in _ZH_RUN_RE.finditer(text)]
    return [Number(run, Decimal(value), frozenset({Decimal(value)})) for run, value in runs]


def compare(source: str, translation: str) -> tuple[list[str], list[str]]:
    """(numbers of the source the translation lost, numbers the translation has that the source
    has not), as written; both empty when the numbers are the same."""
    lost, added = _match(digit_numbers(source), digit_numbers(translation))
    if lost:
        lost, _ = _match(lost, word_numbers(translation))
    if added:
        added, _ = _match(added, word_numbers(source))
    return [n.text for n in lost], [n.text for n in added]


def _match(wanted: list[Number], offered: list[Number]) -> tuple[list[Number], list[Number]]:
    """Pair each wanted number with an offered one of the same value, exact values first; return
    (wanted left unpaired, offered left unused)."""
    left, pool = list(wanted), list(offered)
    for loose in (False, True):
        still = []
        for number in left:
            i = next((i for i, o in enumerate(pool) if _same(number, o, loose)), None)
            if i is None:
                still.append(number)
            else:
                pool.pop(i)
        left = still
    return left, pool


def _same(a: Number, b: Number, loose: bool) -> bool:
    """Exact: the values as written are equal; loose: any reading of one equals one of the other."""
    return bool(a.values & b.values) if loose else a.value == b.value


def _scale(word: str) -> int:
    scale = 1
    for part in [word.lower()] if word.isascii() else list(word):
        scale *= _SCALES.get(part, 1)
    return scale


def _english_value(run: str) -> int:
    total = current = 0
    for word in re.findall(r"[A-Za-z]+", run.lower()):
        if word in _EN_SMALL:
            current += _EN_SMALL[word]
        elif word == "hundred":
            current = (current or 1) * 100
        elif word in _EN_BIG:
            total += (current or 1) * _EN_BIG[word]
            current = 0
    return total + current


def _chinese_value(run: str) -> int:
    """`三百二十` -> 320, `一万五千` -> 15000, `两` -> 2; digit by digit without units (`二〇二三`)."""
    if not any(c in _ZH_UNITS or c in "万亿" for c in run):
        return int("".join(str(_ZH_DIGITS[c]) for c in run))
    total = section = digit = 0
    for c in run:
        if c in _ZH_DIGITS:
            digit = _ZH_DIGITS[c]
        elif c in _ZH_UNITS:
            section += (digit or 1) * _ZH_UNITS[c]
            digit = 0
        elif c == "万":
            total += (section + digit or 1) * 10**4
            section = digit = 0
        else:  # 亿
            total = (total + section + digit or 1) * 10**8
            section = digit = 0
    return total + section + digit
