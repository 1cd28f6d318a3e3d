"""Many segments per request, and what to do when a reply does not line up.

Wire format (kept small: it is billed). The user message is a JSON array with one item per
unit: a string for a single segment, an array of strings for a conversation (one per turn,
in order; roles stay on our side and are re-attached by position). The reply is
`{"t": [...]}` with the same shape. Parsing is tolerant: reasoning (`<think>...</think>`, or
apart in `reasoning_content`), code fences, text and notes around the JSON (brackets included),
a bare array or a differently named key are all accepted.

When a reply cannot be aligned (not JSON, wrong number of items) the request is split in two
and each half sent again, down to single units and then single segments. A unit that comes
back misshapen inside an otherwise aligned reply is re-sent alone; the rest is kept.
Replies that only a tolerant second pass can read (trailing commas, a Python literal with
single quotes) are accepted when strict JSON gives nothing that lines up (`_load_tolerant`).
A request the endpoint rejects as over its context length (`RequestTooLarge`) is split in halves
the same way; a single segment that still does not fit is rejected as `too_long`.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from llm.errors import RequestFailed, RequestTooLarge
from translators.protocol import Usage

REPLY_KEY = "t"
_JSON_START_RE = re.compile(r"[\[{]")
_REASONING_TAG = r"(?:think|thinking|reasoning)"
_REASONING_BLOCK_RE = re.compile(rf"<({_REASONING_TAG})\b[^>]*>.*?</\1\s*>", re.I | re.S)
_REASONING_OPEN_RE = re.compile(rf"<{_REASONING_TAG}\b[^>]*>", re.I)
_REASONING_CLOSE_RE = re.compile(rf"</{_REASONING_TAG}\s*>", re.I)


class ReplyError(ValueError):
    """A reply that cannot be aligned with its request. `reason`: parse_failed | count_mismatch."""

    def __init__(self, reason: str, detail: str, usage: Usage | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.usage = reason, detail, usage or Usage()


@dataclass(slots=True)
class Reply:
    units: list[list[str] | None]
    """Per unit: one translation per segment, or None where that unit came back misshapen."""
    usage: Usage


@dataclass(slots=True)
class SegmentOutcome:
    text: str | None
    reason: str | None = None
    detail: str = ""
    requests: int = 0
    usage: Usage = field(default_factory=Usage)


Send = Callable[[Sequence[Sequence[str]], bool], Awaitable[Reply]]
"""send(units, strict) -> Reply; raises ReplyError or RequestFailed."""


def pack(sizes: Sequence[tuple[int, int]], max_segments: int, max_chars: int) -> list[list[int]]:
    """Group unit indices into requests. `sizes[i]` = (segments, characters) of unit i. A unit
    is never cut; one larger than the limits travels alone."""
    batches: list[list[int]] = []
    current: list[int] = []
    n_seg = n_chars = 0
    for i, (segs, chars) in enumerate(sizes):
        if current and (n_seg + segs > max_segments or n_chars + chars > max_chars):
            batches.append(current)
            current, n_seg, n_chars = [], 0, 0
        current.append(i)
        n_seg += segs
        n_chars += chars
    if current:
        batches.append(current)
    return batches


def encode_units(units: Sequence[Sequence[str]]) -> str:
    items = [u[0] if len(u) == 1 else list(u) for u in units]
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def decode_reply(
    content: str | None, shapes: Sequence[int], usage: Usage | None = None, reasoning: str | None = None
) -> list[list[str] | None]:
    """Align a reply with the units it answers (`shapes[i]` = segments in unit i).

    Every JSON object or array in the reply is a candidate; the reply is the one that lines up
    with the request, preferring one outside the model's reasoning (`<think>...</think>` in
    `content`, or `reasoning`: the `reasoning_content` vLLM and DeepSeek return apart, where
    vLLM also leaves the whole answer when its reasoning parser mistakes it for reasoning)."""
    found = _candidates(content or "", shapes, in_reasoning=False)
    found += _candidates(reasoning or "", shapes, in_reasoning=True)
    if not any(c.rank[0] and c.rank[3] == len(shapes) for c in found):
        # second pass, when nothing lines up whole: what strict JSON refused (trailing commas,
        # Python quotes) may, and it may hold what strict JSON found (an inner array) whole
        tolerant = _candidates(content or "", shapes, in_reasoning=False, tolerant=True)
        tolerant += _candidates(reasoning or "", shapes, in_reasoning=True, tolerant=True)
        if tolerant and (not found or max(c.rank[:4] for c in tolerant) > max(c.rank[:4] for c in found)):
            found = tolerant
    if not found:
        raise ReplyError("parse_failed", _no_reply_detail(content, reasoning), usage)
    best = max(found, key=lambda c: c.rank)
    if best.aligned is None:
        raise ReplyError("count_mismatch", f"sent {len(shapes)} items, got {len(best.items)}", usage)
    return [_unit(item, n) for item, n in zip(best.aligned, shapes)]


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A JSON value of a reply that holds a translation array."""

    items: list
    aligned: list | None
    """`items` one per unit, or None when their number does not match the request."""
    rank: tuple[bool, bool, bool, int, int]
    """Higher is likelier the reply: it lines up; it is outside the reasoning; it is the asked-for
    `{"t": [...]}`; more units are well-formed; it comes later (an answer follows its drafts)."""


def _candidates(text: str, shapes: Sequence[int], in_reasoning: bool, tolerant: bool = False) -> list[_Candidate]:
    regions = [] if in_reasoning else reasoning_regions(text)
    out = []
    for index, (start, top) in enumerate(_load_json(text, tolerant)):
        for value in _reply_like(top):
            items = _extract_list(value, shapes)
            if items is None:
                continue
            aligned = _align(items, shapes)
            well_formed = sum(_unit(item, n) is not None for item, n in zip(aligned, shapes)) if aligned else 0
            outside = not in_reasoning and not _inside(start, regions)
            keyed = isinstance(value, dict) and isinstance(value.get(REPLY_KEY), list)
            out.append(_Candidate(items, aligned, (aligned is not None, outside, keyed, well_formed, index)))
    return out


def _reply_like(top: object) -> list[object]:
    """`top` and every `{"t": [...]}` nested in it (`[{"t": [...]}]`, `{"answer": {"t": [...]}}`)."""
    found, stack = [top], [top]
    while stack:
        value = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        for child in children:
            if isinstance(child, dict) and isinstance(child.get(REPLY_KEY), list):
                found.append(child)
            if isinstance(child, (dict, list)):
                stack.append(child)
    return found


def reasoning_regions(text: str) -> list[tuple[int, int]]:
    """Where `text` is reasoning, as (start, end): closed `<think>`/`<thinking>`/`<reasoning>`
    blocks; all before a close tag whose opening tag was in the prompt (DeepSeek-R1 and Qwen3
    templates open the block themselves); all from an opening tag never closed (cut off)."""
    regions = [m.span() for m in _REASONING_BLOCK_RE.finditer(text)]
    stray_closes = [m.end() for m in _REASONING_CLOSE_RE.finditer(text) if not _inside(m.start(), regions)]
    if stray_closes:
        regions.append((0, stray_closes[-1]))
    stray_opens = [m.start() for m in _REASONING_OPEN_RE.finditer(text) if not _inside(m.start(), regions)]
    if stray_opens:
        regions.append((stray_opens[0], len(text)))
    return regions


def _inside(pos: int, regions: list[tuple[int, int]]) -> bool:
    return any(a <= pos < b for a, b in regions)


def _load_json(text: str, tolerant: bool = False) -> list[tuple[int, object]]:
    """(start, value) of every JSON object or array in `text` that is not inside another. A
    bracket that starts no valid JSON (prose, `[sic]`, a fence) is skipped: text around is harmless.
    Raw newlines and tabs inside strings (local models write them) are accepted: `strict=False`.
    `tolerant`: a bracket that starts no valid JSON is also read by `_load_tolerant`."""
    decoder = json.JSONDecoder(strict=False)
    values: list[tuple[int, object]] = []
    pos, tries = 0, 0
    while (m := _JSON_START_RE.search(text, pos)) is not None:
        try:
            value, pos = decoder.raw_decode(text, m.start())
        except (json.JSONDecodeError, RecursionError):  # RecursionError: brackets nested too deep
            found = None
            if tolerant and tries < _MAX_TOLERANT_TRIES:
                tries += 1
                found = _load_tolerant(text, m.start())
            if found is None:
                pos = m.start() + 1
                continue
            value, pos = found
        values.append((m.start(), value))
    return values


_MAX_TOLERANT_TRIES = 64
"""Brackets the tolerant pass reads at most per text: each may scan to the end of the text."""
_LITERAL_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[\[\]{}]', re.S)
_TRAILING_COMMA_RE = re.compile(r'("(?:[^"\\]|\\.)*")|,(\s*[\]}])', re.S)


def _load_tolerant(text: str, start: int) -> tuple[object, int] | None:
    """(value, end) of the bracketed value at `start` read leniently, or None: JSON with trailing
    commas (`["a", "b",]`), or a Python literal of strings, lists and dicts only (`['a', 'b']`,
    read by `ast.literal_eval`, never `eval`). Anything else (names, numbers, sets...) is refused."""
    end = _balanced_end(text, start)
    if end is None:
        return None
    chunk = text[start:end]
    try:
        return json.loads(_TRAILING_COMMA_RE.sub(lambda m: m.group(1) or m.group(2), chunk), strict=False), end
    except (ValueError, RecursionError):
        pass
    try:
        value = ast.literal_eval(chunk)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return (value, end) if _only_text(value) else None


def _balanced_end(text: str, start: int) -> int | None:
    """The end of the bracketed value starting at `start` (strings in either quote skipped), or
    None when its brackets do not close in order."""
    stack: list[str] = []
    for m in _LITERAL_TOKEN_RE.finditer(text, start):
        tok = m.group()
        if tok in "[{":
            stack.append("]" if tok == "[" else "}")
        elif tok in "]}":
            if not stack or stack.pop() != tok:
                return None
            if not stack:
                return m.end()
        elif not stack:
            return None
    return None


def _only_text(value: object, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if isinstance(value, str):
        return True
    if isinstance(value, list):
        return all(_only_text(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _only_text(v, depth + 1) for k, v in value.items())
    return False


def _extract_list(data: object, shapes: Sequence[int]) -> list | None:
    """The translation array of one JSON value, or None when it holds none."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if isinstance(data.get(REPLY_KEY), list):
            return data[REPLY_KEY]
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            return lists[0]
        if len(shapes) == 1 and shapes[0] == 1 and len(data) == 1 and isinstance(next(iter(data.values())), str):
            return [next(iter(data.values()))]
    return None


def _align(items: list, shapes: Sequence[int]) -> list | None:
    """`items` as one item per unit, or None when their number does not match."""
    if len(items) == len(shapes):
        return items
    if len(shapes) == 1 and len(items) == shapes[0] and all(isinstance(x, str) for x in items):
        return [items]  # one conversation sent, its turns came back unwrapped
    return None


def _no_reply_detail(content: str | None, reasoning: str | None) -> str:
    if content and content.strip():
        return f"no JSON translation array in the reply: {content[:80]!r}"
    if reasoning:
        return f"reply content is empty; its reasoning ({len(reasoning)} chars) holds no translation array"
    return "reply content is empty"


def _unit(item: object, n: int) -> list[str] | None:
    if isinstance(item, str):
        return [item] if n == 1 else None
    if isinstance(item, list) and len(item) == n and all(isinstance(x, str) for x in item):
        return list(item)
    return None


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split an integer total in proportion to weights; the parts add up exactly."""
    if not weights:
        return []
    w = [max(1, x) for x in weights]
    exact = [total * x / sum(w) for x in w]
    parts = [int(e) for e in exact]
    for i in sorted(range(len(w)), key=lambda i: exact[i] - parts[i], reverse=True)[: total - sum(parts)]:
        parts[i] += 1
    return parts


async def send_with_split(
    send: Send, units: Sequence[Sequence[str]], strict: bool = False
) -> list[list[SegmentOutcome]]:
    """Translate `units` with as few requests as the replies allow; one outcome per segment."""
    try:
        reply = await send(units, strict)
    except RequestTooLarge as e:
        if len(units) == 1 and len(units[0]) == 1:
            detail = f"one segment of {len(units[0][0]):,} characters is over the endpoint's context length: {e.detail}"
            return [[SegmentOutcome(None, e.reason, detail, 1)]]
        return await _split(send, units, strict)
    except RequestFailed as e:
        return [[SegmentOutcome(None, e.reason, e.detail, 1) for _ in u] for u in units]
    except ReplyError as e:
        if len(units) == 1 and len(units[0]) == 1:
            out = [[SegmentOutcome(None, e.reason, e.detail, 1)]]
        else:
            out = await _split(send, units, strict)
        _charge(out, units, e.usage)
        return out
    out: list[list[SegmentOutcome]] = [
        [SegmentOutcome(t, requests=1) for t in texts] if texts is not None else [] for texts in reply.units
    ]
    _charge(out, units, reply.usage)
    misshapen = [i for i, texts in enumerate(reply.units) if texts is None]
    redone = await asyncio.gather(*(_split(send, [units[i]], strict) for i in misshapen))
    for i, again in zip(misshapen, redone):
        out[i] = again[0]
    return out


async def _split(send: Send, units: Sequence[Sequence[str]], strict: bool) -> list[list[SegmentOutcome]]:
    if len(units) > 1:
        mid = len(units) // 2
        left, right = await asyncio.gather(
            send_with_split(send, units[:mid], strict), send_with_split(send, units[mid:], strict)
        )
        out = left + right
    else:
        singles = await send_with_split(send, [[s] for s in units[0]], strict)
        out = [[seg[0] for seg in singles]]
    for unit in out:
        for seg in unit:
            seg.requests += 1  # the request that failed carried it too
    return out


def _charge(out: list[list[SegmentOutcome]], units: Sequence[Sequence[str]], usage: Usage) -> None:
    """Spread one request's billed tokens over its segments, by length. Units left empty in
    `out` (re-sent separately) get no share; their own requests charge them."""
    targets = [(seg, len(text)) for unit_out, unit in zip(out, units) for seg, text in zip(unit_out, unit)]
    weights = [w for _, w in targets]
    prompt, completion = apportion(usage.prompt_tokens, weights), apportion(usage.completion_tokens, weights)
    for (seg, _), p, c in zip(targets, prompt, completion):
        seg.usage.prompt_tokens += p
        seg.usage.completion_tokens += c
