"""What every translator takes and gives back, whatever is behind it (an API, a memory).

A caller hands over *units*: a unit is a list of segments translated together (a caption is
a unit of one; a conversation is one unit with a segment per turn, so the model sees the
whole dialogue). It gets back one `SegmentResult` per segment, in the same shape. A result
always says whether it passed QA and, if not, why: nothing fails silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from llm.errors import EndpointError
from llm.usage import Usage

__all__ = ["Segment", "SegmentResult", "Translator", "TranslatorError", "Usage", "Verdict"]

SegmentKind = Literal["text", "short_answer"]
"""`short_answer`: a one-word VQA answer; its translation must stay a short phrase."""

Origin = Literal["model", "memory", "passthrough", "none"]
"""Where a translation came from; `passthrough`: nothing to translate (only `<image>`, numbers,
URLs or code), the source is the translation; `none`: no translation was obtained."""


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    kind: SegmentKind = "text"


Unit = Sequence[Segment]


@dataclass(frozen=True, slots=True)
class Verdict:
    """QA outcome of one segment. `reasons` are short snake_case codes (`mask_lost`, ...)."""

    ok: bool
    reasons: tuple[str, ...] = ()
    detail: str = ""

    @classmethod
    def passed(cls) -> "Verdict":
        return cls(True)

    @classmethod
    def failed(cls, reason: str, detail: str = "") -> "Verdict":
        return cls(False, (reason,), detail)

    @property
    def reason(self) -> str | None:
        return self.reasons[0] if self.reasons else None

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "reasons": list(self.reasons), "detail": self.detail}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(bool(data["ok"]), tuple(data.get("reasons", ())), data.get("detail", ""))


@dataclass(slots=True)
class SegmentResult:
    source: str
    text: str | None
    """The translation with every placeholder restored; None when none was obtained."""
    verdict: Verdict
    origin: Origin
    usage: Usage = field(default_factory=Usage)
    attempts: int = 0
    """Model requests that carried this segment (0 for memory hits and passthrough)."""

    @property
    def ok(self) -> bool:
        return self.verdict.ok and self.text is not None


@runtime_checkable
class Translator(Protocol):
    """An async translator. Implementations: `MemoryTranslator`, `OpenAITranslator`."""

    model: str
    prompt_version: str

    async def translate(self, units: Sequence[Unit]) -> list[list[SegmentResult]]:
        """One result per segment, same shape as `units`. Never raises for a bad segment;
        raises `TranslatorError` only when nothing can work (bad key, unknown model)."""
        ...

    def report(self) -> dict[str, Any]:
        """Counters so far: memory hits/misses, requests, retries, tokens and cost per model."""
        ...

    async def aclose(self) -> None: ...


class TranslatorError(EndpointError):
    """The translator cannot run at all (configuration, credentials, endpoint); the message says
    what to change. Per-segment problems are verdicts, never this."""
