"""What a translator did, for the stage's table: memory use, requests, failures, tokens, cost."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from translators.protocol import Usage

ALWAYS_REPORTED = ("segments", "memory_hits", "memory_misses", "duplicates", "requests", "retries")


@dataclass
class TranslatorReport:
    price_in_per_million: float = 0.0
    price_out_per_million: float = 0.0
    counts: Counter = field(default_factory=Counter)
    """segments, passthrough, duplicates, memory_hits, memory_misses, memory_hits_failed_qa,
    requests, retries, reply_errors, strict_retries, json_mode_disabled."""
    failed: Counter = field(default_factory=Counter)
    """Unique segments that ended without a usable translation, by reason."""
    failed_requests: Counter = field(default_factory=Counter)
    """Requests that ended without an answer after their retries, by cause (`connection_error`,
    `timeout`, `http_500`...); `counts["requests_answered"]` counts those that got one."""
    usage: dict[str, Usage] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def add_usage(self, model: str, usage: Usage) -> None:
        self.usage.setdefault(model, Usage()).add(usage)

    def cost_usd(self, model: str) -> float:
        u = self.usage.get(model, Usage())
        return (u.prompt_tokens * self.price_in_per_million + u.completion_tokens * self.price_out_per_million) / 1e6

    def to_dict(self) -> dict[str, Any]:
        """Flat keys, ready for `StepStats.extra`; the main counters appear even when zero."""
        out: dict[str, Any] = {name: 0 for name in ALWAYS_REPORTED}
        out.update(self.counts)
        out.update({f"failed_{reason}": n for reason, n in self.failed.items()})
        out.update({f"requests_failed_{cause}": n for cause, n in self.failed_requests.items()})
        for model, u in self.usage.items():
            out[f"prompt_tokens[{model}]"] = u.prompt_tokens
            out[f"completion_tokens[{model}]"] = u.completion_tokens
            out[f"cost_usd[{model}]"] = round(self.cost_usd(model), 6)
        return out
