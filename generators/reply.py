"""Strict reading of a generator's reply: one JSON object of the kind's shape, or a reason.

    conversation  {"conversation": [{"question": str, "answer": str}, ...]}
    detail        {"description": str}
    reasoning     {"question": str, "answer": str}

Tolerated around the object: whitespace, a ```json fence, and a reasoning model's
`<think>...</think>` preamble. Nothing else is repaired: a truncated or otherwise broken object is
`parse_failed`, an object of the wrong shape `wrong_shape` (or a more precise code), and the caller
asks once more with a stricter prompt.
"""

from __future__ import annotations

import json
import re
from typing import Any

from generators.config import Kind

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)


class ReplyError(ValueError):
    """`reason`: parse_failed | wrong_shape | empty_turn | unanswered_question | too_many_turns."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def parse_reply(kind: Kind, content: str | None, max_turns: int) -> list[tuple[str, str]]:
    """The (question, answer) pairs of a reply; for `detail` one pair with an empty question (the
    caller picks the instruction). Raises ReplyError."""
    data = _json_object(content)
    if kind == "conversation":
        turns = data.get("conversation")
        if not isinstance(turns, list) or not turns:
            raise ReplyError("wrong_shape", 'expected {"conversation": [{"question": ..., "answer": ...}, ...]}')
        if len(turns) > max_turns:
            raise ReplyError("too_many_turns", f"{len(turns)} question-answer pairs (at most {max_turns})")
        return [_pair(t, i) for i, t in enumerate(turns)]
    if kind == "detail":
        text = data.get("description")
        if not isinstance(text, str):
            raise ReplyError("wrong_shape", 'expected {"description": "..."}')
        if not text.strip():
            raise ReplyError("empty_turn", "the description is empty")
        return [("", text.strip())]
    return [_pair(data, 0)]


def _json_object(content: str | None) -> dict[str, Any]:
    if content is None or not content.strip():
        raise ReplyError("parse_failed", "empty reply")
    text = _THINK.sub("", content.strip())
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ReplyError("parse_failed", f"not a JSON object ({e.msg} at char {e.pos}): {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise ReplyError("wrong_shape", f"a JSON {type(data).__name__}, not an object")
    return data


def _pair(item: Any, index: int) -> tuple[str, str]:
    if not isinstance(item, dict) or not isinstance(item.get("question"), str):
        raise ReplyError("wrong_shape", f"item {index}: expected {{\"question\": str, \"answer\": str}}")
    question, answer = item["question"].strip(), item.get("answer")
    if not question:
        raise ReplyError("empty_turn", f"item {index}: empty question")
    if not isinstance(answer, str) or not answer.strip():
        raise ReplyError("unanswered_question", f"item {index}: question {question[:60]!r} has no answer")
    return question, answer.strip()
