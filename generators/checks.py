"""Quality checks on one generated record: each failure is a reason code for `rejected/`.

`not_chinese` too few CJK characters among the letters (for `language: zh`); `not_english` the
other way round; `mixed_script` Latin words inside a Chinese reply beyond names the context holds;
`too_short` / `too_long` the answers' length out of the kind's bounds; `gives_away_context` text
that reads as from annotations instead of from seeing the image ("根据描述", "边界框", "bounding
box", raw box numbers); `refusal` a refusal or a note about the task; `duplicate_question` the same
question twice in a record. Object names in answers that no caption, box, QA or OCR of the image
mentions are counted (`unsupported_objects`), not rejected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from generators.context import Context

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]{3,}")
_LETTER = re.compile(r"[A-Za-z\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
GIVEAWAY = ("根据描述", "根据提供的", "根据所给", "根据材料", "根据标注", "根据图片描述", "描述中", "材料中", "标注",
            "边界框", "坐标", "caption", "bounding box", "coordinates", "annotation", "based on the description")
REFUSAL = ("作为一个ai", "作为一个人工智能", "作为ai", "抱歉", "我无法", "我不能", "无法确定", "i'm sorry", "i am sorry",
           "as an ai", "i cannot", "i can't")
_BOX_NUMBERS = re.compile(r"\[\s*[01]?\.\d+\s*,|\b0\.\d{3}\b")
MIXED_LATIN_SHARE = 0.15
"""A Chinese reply whose letters are more than this share Latin (outside names in the context) is mixed."""


@dataclass(frozen=True, slots=True)
class Bounds:
    min_chars: int
    max_chars: int
    min_cjk_ratio: float
    language: str


def check_record(turns: list[tuple[str, str]], context: Context, bounds: Bounds) -> tuple[str, str] | None:
    """(reason, detail) of the first failed check, or None when the record passes."""
    text = "\n".join(q + "\n" + a for q, a in turns)
    answers = "".join(a for _, a in turns)
    lowered = text.lower()
    for phrase in REFUSAL:
        if phrase in lowered:
            return "refusal", f"contains {phrase!r}"
    for phrase in GIVEAWAY:
        if phrase in lowered:
            return "gives_away_context", f"mentions {phrase!r} instead of speaking as if seeing the image"
    if m := _BOX_NUMBERS.search(text):
        return "gives_away_context", f"quotes box coordinates ({m.group(0)!r})"
    if verdict := _script(text, context, bounds):
        return verdict
    if len(answers) < bounds.min_chars:
        return "too_short", f"{len(answers)} characters of answers (at least {bounds.min_chars})"
    if len(answers) > bounds.max_chars:
        return "too_long", f"{len(answers)} characters of answers (at most {bounds.max_chars})"
    seen: set[str] = set()
    for q, _ in turns:
        key = re.sub(r"[\s？?。.!！，,]", "", q)
        if key and key in seen:
            return "duplicate_question", f"asked twice: {q[:60]!r}"
        seen.add(key)
    return None


def _script(text: str, context: Context, bounds: Bounds) -> tuple[str, str] | None:
    letters = _LETTER.findall(text)
    if not letters:
        return ("not_chinese" if bounds.language == "zh" else "not_english"), "no letters at all"
    cjk = sum(1 for c in letters if _CJK.match(c))
    if bounds.language == "en":
        return ("not_english", f"{cjk} CJK characters in an English reply") if cjk > 0.05 * len(letters) else None
    ratio = cjk / len(letters)
    if ratio < bounds.min_cjk_ratio:
        return "not_chinese", f"CJK share of letters {ratio:.2f} < {bounds.min_cjk_ratio}"
    known = " ".join([*context.captions, *(b.name for b in context.boxes), *context.ocr]).lower()
    foreign = [w for w in _LATIN_WORD.findall(text) if w.lower() not in known]
    latin = sum(len(w) for w in foreign)
    if latin > MIXED_LATIN_SHARE * len(letters):
        return "mixed_script", f"Latin words not from the context: {' '.join(foreign[:6])}"
    return None


_COUNTED = "一二两三四五六七八九十几多每这那只个匹头条艘把本位名群些辆架张台块盘杯"
"""A one-character name (狗, 马, 人) counts only right after a number, measure word or demonstrative
("一只狗", "两匹马"): elsewhere it is mostly part of another word (马上, 熊猫, 人们)."""


def _mentions(text: str, zh: str) -> bool:
    if len(zh) > 1:
        return zh in text
    return any(text[i - 1] in _COUNTED for i in range(1, len(text)) if text[i] == zh)


def unsupported_objects(turns: list[tuple[str, str]], context: Context,
                        names: dict[str, tuple[str, ...]]) -> list[str]:
    """English names of objects the answers mention that the context does not."""
    answers = "".join(a for _, a in turns)
    ctx = " ".join([*context.captions, *(b.name for b in context.boxes), *context.ocr,
                    *(q + " " + a for q, a in context.qa)]).lower()
    out = []
    for en, zh_names in names.items():
        if not any(_mentions(answers, z) for z in zh_names) and not re.search(rf"\b{re.escape(en)}\b", answers.lower()):
            continue
        in_context = re.search(rf"\b{re.escape(en)}s?\b", ctx) or any(z in ctx for z in zh_names)
        if not in_context:
            out.append(en)
    return out
