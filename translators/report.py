"""What a translator did, for the step's table: memory use, requests, failures, tokens, cost.

The request side (requests, retries, failures by cause, tokens, cost) is the client layer's
`RequestLedger`; this adds the translation side (segments, memory hits, failed segments)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from llm.usage import RequestLedger

ALWAYS_REPORTED = ("segments", "memory_hits", "memory_misses", "duplicates", "requests", "retries")


@dataclass
class TranslatorReport(RequestLedger):
    """`counts` also holds segments, passthrough, duplicates, memory_hits, memory_misses,
    memory_hits_failed_qa, strict_retries."""

    failed: Counter = field(default_factory=Counter)
    """Unique segments that ended without a usable translation, by reason."""

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update({f"failed_{reason}": n for reason, n in self.failed.items()})
        return out

    def always_reported(self) -> tuple[str, ...]:
        return ALWAYS_REPORTED
