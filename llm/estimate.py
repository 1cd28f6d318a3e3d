"""What a run will cost before it sends anything: requests, tokens, cache hits, dollars, minutes.

Tokens are counted without the provider's tokenizer (none may be downloaded at run time): a CJK
character is about one token in the GPT-4o / Qwen / DeepSeek vocabularies, other text about four
UTF-8 bytes per token, and each message carries a few tokens of framing. The counts are estimates;
a run's summary shows them next to what the endpoint billed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from llm.config import EndpointConfig
from llm.usage import Usage

MESSAGE_OVERHEAD = 4
"""Tokens of role and framing per chat message (OpenAI's documented figure for its chat format)."""
IMAGE_TOKENS = 765
"""An `image_url` part at detail "high" up to 512 px a side: 85 + 4 tiles x 170 (OpenAI's figure)."""
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def text_tokens(text: str) -> int:
    cjk = len(_CJK.findall(text))
    rest = len(text.encode("utf-8")) - 3 * cjk
    return cjk + math.ceil(max(0, rest) / 4)


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Estimated prompt tokens of a chat request (text parts counted, image parts at `IMAGE_TOKENS`)."""
    total = 0
    for m in messages:
        total += MESSAGE_OVERHEAD
        content = m.get("content")
        if isinstance(content, str):
            total += text_tokens(content)
        elif isinstance(content, list):
            for part in content:
                total += text_tokens(part.get("text", "")) if part.get("type") == "text" else IMAGE_TOKENS
    return total


def request_tokens(messages: list[dict[str, Any]], expected_output: int | None = None) -> int:
    """What a request will take from a tokens-per-minute budget: its prompt plus the expected reply
    (by default as long as the last message: a translation is about as long as its source)."""
    if expected_output is None:
        expected_output = prompt_tokens(messages[-1:])
    return prompt_tokens(messages) + expected_output


@dataclass
class Estimate:
    """Accumulated while the prompts of a run are built, without sending them."""

    requests: int = 0
    cache_hits: int = 0
    """Items served from the response cache or translation memory: no request."""
    input_tokens: int = 0
    output_tokens: int = 0
    shared_prefix_tokens: int = 0
    """Prompt tokens in the fixed part before the per-item content (providers cache it)."""
    items: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, prompt: int, output: int, prefix: int = 0) -> None:
        self.requests += 1
        self.input_tokens += prompt
        self.output_tokens += output
        self.shared_prefix_tokens += prefix

    def cost_usd(self, config: EndpointConfig) -> float:
        return config.price.prices().cost(Usage(self.input_tokens, self.output_tokens))

    def minutes(self, config: EndpointConfig) -> float | None:
        """Time at the recipe's rate limits (None when it sets none: then latency decides)."""
        bounds = []
        if config.requests_per_minute:
            bounds.append(self.requests / config.requests_per_minute)
        if config.tokens_per_minute:
            bounds.append((self.input_tokens + self.output_tokens) / config.tokens_per_minute)
        return max(bounds) if bounds else None

    def to_dict(self, config: EndpointConfig) -> dict[str, Any]:
        minutes = self.minutes(config)
        return {
            "items": self.items, "requests": self.requests, "cache_hits": self.cache_hits,
            "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
            "shared_prefix_tokens": self.shared_prefix_tokens,
            "cost_usd": round(self.cost_usd(config), 6),
            "minutes_at_limits": None if minutes is None else round(minutes, 2),
        }

    def table(self, config: EndpointConfig, title: str) -> str:
        d = self.to_dict(config)
        minutes = d["minutes_at_limits"]
        rows = [
            ("items", f"{d['items']:,}"),
            ("served from cache / memory", f"{d['cache_hits']:,}"),
            ("requests to send", f"{d['requests']:,}"),
            ("input tokens", f"{d['input_tokens']:,}"),
            ("  of which shared prefix", f"{d['shared_prefix_tokens']:,}"),
            ("output tokens", f"{d['output_tokens']:,}"),
            ("cost (USD)", f"{d['cost_usd']:.4f}" + ("" if (config.price.input_per_million or config.price.output_per_million)
                                                      else " (no prices in the recipe)")),
            ("time at rate limits", f"{minutes:.1f} min" if minutes is not None else "not bounded by limits "
             f"(set {config.SECTION}.requests_per_minute / tokens_per_minute)"),
        ]
        width = max(len(k) for k, _ in rows)
        lines = [f"{title} (estimate: nothing sent; model {config.model})"]
        lines += [f"  {k.ljust(width)}  {v}" for k, v in rows]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)
