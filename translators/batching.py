"""Many segments per request, and what to do when a reply does not line up.

Wire format (kept small: it is billed). The user message is a JSON array with one item per
unit: a string for a single segment, an array of strings for a conversation (one per turn,
in order; roles stay on our side and are re-attached by position). The reply is
`{"t": [...]}` with the same shape. Parsing is tolerant: code fences, text around the JSON,
a bare array or a differently named key are all accepted.

When a reply cannot be aligned (not JSON, wrong number of items) the request is split in two
and each half sent again, down to single units and then single segments. A unit that comes
back misshapen inside an otherwise aligned reply is re-sent alone; the rest is kept.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from translators.protocol import Usage

REPLY_KEY = "t"
_FENCE_RE = re.compile(r"^```[A-Za-z0-9_-]*\s*|\s*```$")


class ReplyError(ValueError):
    """A reply that cannot be aligned with its request. `reason`: parse_failed | count_mismatch."""

    def __init__(self, reason: str, detail: str, usage: Usage | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.usage = reason, detail, usage or Usage()


class RequestFailed(RuntimeError):
    """The request itself failed after all retries (HTTP errors, timeouts)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


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


def decode_reply(content: str | None, shapes: Sequence[int], usage: Usage | None = None) -> list[list[str] | None]:
    """Align a reply with the units it answers (`shapes[i]` = segments in unit i)."""
    items = _extract_list(_load_json(content or "", usage), shapes, usage)
    if len(items) != len(shapes):
        if len(shapes) == 1 and len(items) == shapes[0] and all(isinstance(x, str) for x in items):
            items = [items]  # one conversation sent, its turns came back unwrapped
        else:
            raise ReplyError("count_mismatch", f"sent {len(shapes)} items, got {len(items)}", usage)
    return [_unit(item, n) for item, n in zip(items, shapes)]


def _load_json(content: str, usage: Usage | None) -> object:
    text = _FENCE_RE.sub("", content.strip())
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    end = max(text.rfind("}"), text.rfind("]"))
    if starts and end > min(starts):
        try:
            return json.loads(text[min(starts) : end + 1])
        except json.JSONDecodeError:
            pass
    raise ReplyError("parse_failed", f"reply is not JSON: {content[:80]!r}", usage)


def _extract_list(data: object, shapes: Sequence[int], usage: Usage | None) -> list:
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
    raise ReplyError("parse_failed", f"no translation array in the reply ({type(data).__name__})", usage)


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
