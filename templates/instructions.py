"""From a record's messages to the (instruction, answer) pairs a template renders.

* One image whose ``<image>`` leads the first user message (or that has no marker): the marker is
  taken out of the text and the template places the image block (`image_placement` "slot").
  Several images, or one asked about in a later turn: every ``<image>`` becomes an image block
  where it stands ("inline"). Markers stand in user messages only and number the images exactly.
* A short VQA answer gets a hint appended to its question ("请用一个词或短语回答。"), as LLaVA-1.5
  does in English, so the model learns when a one-word answer is wanted.
* OCR items (``meta.kind == "ocr"``) keep their text verbatim: nothing is stripped or
  normalised, because whitespace and case are what the model must read off the image.
* Text that still holds a reserved string (``<img>``, ``<img_token>``, ...) is refused: the
  tokenizer would read it as a special token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from typing import Literal

from templates.image import IMAGE_BLOCK, find_reserved
from templates.schema import IMAGE_PLACEHOLDER, Message, Record, images_of

_MARKER = re.escape(IMAGE_PLACEHOLDER)
_MARKER_WITH_NEWLINE = re.compile(f"{_MARKER}\n|\n{_MARKER}|{_MARKER}")
_INLINE = "\ue000"
"""Stands for an inline image while the text is cleaned and checked (a private-use character)."""
Placement = Literal["none", "slot", "inline"]
"""The marker and the one line break that set it apart (LLaVA writes "<image>\\nQ" or "Q\\n<image>")."""


class InstructionError(ValueError):
    """A record that cannot become instructions; `reason` is the rejection reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class HintPolicy:
    hint: str = "请用一个词或短语回答。"
    max_answer_chars: int = 16
    """An answer this short (after stripping) counts as a short VQA answer."""

    def ask_short(self, question: str) -> str:
        """`question` as a short-answer VQA question is rendered: the hint on a line of its own
        (nothing added when the hint is empty or already ends the question)."""
        if not self.hint or question.endswith(self.hint):
            return question
        return f"{question}\n{self.hint}" if question else self.hint

    def to_record(self) -> dict:
        """The policy as the `prompt` record of a shard manifest or a stage folder's stage.json."""
        return {"vqa_hint": self.hint, "vqa_hint_max_chars": self.max_answer_chars}

    @classmethod
    def from_record(cls, record: object) -> "HintPolicy":
        """The policy a `prompt` record names; the defaults where it names none (shard sets and stage
        folders written before the record existed)."""
        if not isinstance(record, dict):
            return cls()
        default, hint, chars = cls(), record.get("vqa_hint"), record.get("vqa_hint_max_chars")
        ok_chars = isinstance(chars, int) and not isinstance(chars, bool) and chars > 0
        return cls(hint=hint if isinstance(hint, str) else default.hint,
                   max_answer_chars=chars if ok_chars else default.max_answer_chars)


PROMPT_RECORD = "prompt"
"""Key of the prompt record (`HintPolicy.to_record()` + template names) in a shard set's manifest.json
and a stage folder's stage.json: what the rendered rows asked, so eval and chat ask the same way."""


def is_ocr(record: Record) -> bool:
    return record.meta.get("kind") == "ocr"


def image_placement(record: Record) -> Placement:
    """Where a record's images go: none, the template's slot in the first prompt (one image led by
    its marker in the first user message, or unmarked), or inline at each `<image>` marker."""
    images = len(images_of(record))
    if images == 0:
        return "none"
    later = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in record.messages[1:])
    return "slot" if images == 1 and later == 0 else "inline"


def instruction_pairs(record: Record, policy: HintPolicy = HintPolicy()) -> list[tuple[str, str]]:
    """The record's conversation as (instruction, answer) pairs, ready for a template (inline images
    as image blocks in the instructions; see `image_placement`)."""
    _check_roles(record.messages)
    _check_marker(record)
    verbatim = is_ocr(record)
    inline = image_placement(record) == "inline"
    pairs = []
    for i in range(0, len(record.messages), 2):
        question = _clean(record.messages[i]["content"], verbatim, inline)
        answer = _clean(record.messages[i + 1]["content"], verbatim)
        if not answer.strip():
            raise InstructionError("empty_turn", f"message {i + 1} (assistant) is empty")
        if not question.strip() and not (i == 0 and record.image is not None):
            raise InstructionError("empty_turn", f"message {i} (user) is empty")
        pairs.append((question, answer))
    if record.task == "vqa" and len(pairs) == 1:
        pairs[0] = (_with_hint(pairs[0][0], pairs[0][1], policy), pairs[0][1])
    return pairs


def caption_of(record: Record) -> str:
    """The caption of a stage-1 record: its single answer (any user text is not used)."""
    pairs = instruction_pairs(record)
    if len(pairs) != 1:
        raise InstructionError("caption_not_single_turn", f"a caption record has {len(pairs)} turns")
    return pairs[0][1]


def sharegpt_messages(pairs: list[tuple[str, str]], image: bool) -> list[Message]:
    """Pairs as role/content messages, ``<image>`` leading the first user turn (LLaMA-Factory) for a
    slot image (`image`), and standing where its block stands for inline images."""
    out: list[Message] = []
    for i, (question, answer) in enumerate(pairs):
        question = question.replace(IMAGE_BLOCK, IMAGE_PLACEHOLDER)
        if i == 0 and image:
            question = IMAGE_PLACEHOLDER + ("\n" + question if question else "")
        out.append(Message(role="user", content=question))
        out.append(Message(role="assistant", content=answer))
    return out


def _check_roles(messages: list[Message]) -> None:
    if not messages or len(messages) % 2:
        raise InstructionError("bad_roles", f"need user/assistant pairs, got {len(messages)} message(s)")
    for i, m in enumerate(messages):
        want = "user" if i % 2 == 0 else "assistant"
        if m.get("role") != want or not isinstance(m.get("content"), str):
            raise InstructionError("bad_roles", f"message {i}: expected a {want} message with text content")


def _check_marker(record: Record) -> None:
    """Markers in user messages only; exactly one per image (one image may also go unmarked)."""
    where = [i for i, m in enumerate(record.messages) for _ in range(m["content"].count(IMAGE_PLACEHOLDER))]
    images = len(images_of(record))
    if where and images == 0:
        raise InstructionError("image_marker_without_image", f"{IMAGE_PLACEHOLDER} in message {where[0]}")
    if where and len(where) != images or (images > 1 and not where):
        raise InstructionError("image_marker_count", f"{len(where)} {IMAGE_PLACEHOLDER} markers for {images} image(s)")
    answers = [i for i in where if i % 2]
    if answers:
        raise InstructionError("image_marker_position", f"{IMAGE_PLACEHOLDER} in message {answers[0]}, an answer")


def _clean(content: str, verbatim: bool, inline: bool = False) -> str:
    if _INLINE in content:
        raise InstructionError("reserved_token", "the text contains U+E000 (private use; it stands for an image here)")
    if inline:  # each marker becomes an image block where it stands; the text around it is kept
        text = content.replace(IMAGE_PLACEHOLDER, _INLINE)
    elif verbatim:
        text = _MARKER_WITH_NEWLINE.sub("", content, count=1)
    else:
        text = content.replace(IMAGE_PLACEHOLDER, "")
    if not verbatim:
        text = text.strip()
    reserved = find_reserved(text)
    if reserved is not None:
        raise InstructionError("reserved_token", f"the text contains {reserved!r}")
    return text.replace(_INLINE, IMAGE_BLOCK)


def _with_hint(question: str, answer: str, policy: HintPolicy) -> str:
    if len(answer.strip()) > policy.max_answer_chars:
        return question
    return policy.ask_short(question)
