"""Tokens as the endpoint billed them, and what a run's requests cost.

`cached_tokens` is the part of `prompt_tokens` the provider served from its prefix cache
(OpenAI `usage.prompt_tokens_details.cached_tokens`, DeepSeek `prompt_cache_hit_tokens`); it is
priced at `price.cached_input_per_million` when the recipe sets one, else as any input token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: "Usage") -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "cached_tokens": self.cached_tokens}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Usage":
        data = data or {}
        return cls(int(data.get("prompt_tokens", 0)), int(data.get("completion_tokens", 0)),
                   int(data.get("cached_tokens", 0)))


@dataclass(frozen=True, slots=True)
class Prices:
    """US dollars per million tokens."""

    input_per_million: float = 0.0
    output_per_million: float = 0.0
    cached_input_per_million: float | None = None

    def cost(self, usage: Usage) -> float:
        cached_price = self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million
        uncached = max(0, usage.prompt_tokens - usage.cached_tokens)
        return (uncached * self.input_per_million + usage.cached_tokens * cached_price
                + usage.completion_tokens * self.output_per_million) / 1e6


ALWAYS_REPORTED = ("requests", "retries")


@dataclass
class RequestLedger:
    """What the client did: requests, retries, failures by cause, tokens and cost per model."""

    prices: Prices = field(default_factory=Prices)
    counts: Counter = field(default_factory=Counter)
    """requests, requests_answered, retries, reply_errors, json_mode_disabled, context_splits, ..."""
    failed_requests: Counter = field(default_factory=Counter)
    """Requests that ended without an answer after their retries, by cause (`connection_error`,
    `timeout`, `http_500`...)."""
    usage: dict[str, Usage] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] += n

    def add_usage(self, model: str, usage: Usage) -> None:
        self.usage.setdefault(model, Usage()).add(usage)

    def cost_usd(self, model: str) -> float:
        return self.prices.cost(self.usage.get(model, Usage()))

    def to_dict(self) -> dict[str, Any]:
        """Flat keys, ready for `StepStats.extra`; the main counters appear even when zero."""
        out: dict[str, Any] = {name: 0 for name in self.always_reported()}
        out.update(self.counts)
        out.update({f"requests_failed_{cause}": n for cause, n in self.failed_requests.items()})
        for model, u in self.usage.items():
            out[f"prompt_tokens[{model}]"] = u.prompt_tokens
            out[f"completion_tokens[{model}]"] = u.completion_tokens
            if u.cached_tokens:
                out[f"cached_tokens[{model}]"] = u.cached_tokens
            out[f"cost_usd[{model}]"] = round(self.cost_usd(model), 6)
        return out

    def always_reported(self) -> tuple[str, ...]:
        return ALWAYS_REPORTED


def usage_of(response: Any) -> Usage:
    """The usage of a chat-completions response object (zeros when the server sent none)."""
    u = getattr(response, "usage", None)
    if u is None:
        return Usage()
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    if cached is None:
        cached = getattr(u, "prompt_cache_hit_tokens", None)
    return Usage(int(u.prompt_tokens or 0), int(u.completion_tokens or 0), int(cached or 0))
