"""The one record type that flows through every stage (see DESIGN.md, "Records and rows").

A source reader yields `Record`s; translation fills `messages` with Chinese and keeps the
English in `messages_en`; rendering turns a record into shard rows. Records cross process
boundaries and land in JSONL files, so they convert to and from plain dicts losslessly.
The shard row a record becomes is described in `templates/rows.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypedDict, get_args

Role = Literal["user", "assistant"]
Task = Literal["caption", "vqa", "conversation", "text"]
IMAGE_PLACEHOLDER = "<image>"


class Message(TypedDict):
    role: Role
    content: str


def make_id(source: str, original_id: str | int) -> str:
    """Stable id from the source name and the id the source gave the item (never a counter).

    The same item read twice, in any order or on any worker, gets the same id; that is what
    makes dedup, resume and the translation join work.
    """
    digest = hashlib.sha256(f"{source}\x1f{original_id}".encode("utf-8")).hexdigest()
    return digest[:24]


@dataclass(slots=True)
class Record:
    id: str
    source: str
    task: Task
    messages: list[Message]
    image: str | list[str] | None = None
    """URL, local path or img2dataset key of the image; a list for several images (in the order of
    their `<image>` markers); None for text-only records. `images_of` gives a list either way."""
    lang: str = "en"
    """Language of `messages`. Translation skips records already in the target language."""
    meta: dict[str, Any] = field(default_factory=dict)
    messages_en: list[Message] | None = None
    translation: dict[str, Any] | None = None
    """Set by translation: model, prompt version, QA verdicts."""

    def __post_init__(self) -> None:
        if self.task not in get_args(Task):
            raise ValueError(f"record {self.id}: task {self.task!r} is not one of {get_args(Task)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Record":
        return cls(**data)


def images_of(record: Record) -> list[str]:
    """The record's image references as a list (empty for text-only records)."""
    if record.image is None:
        return []
    return list(record.image) if isinstance(record.image, list) else [record.image]
