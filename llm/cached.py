"""Cache first, then the endpoint: how generation and the eval judge get a reply.

    got = await cache_first(cache, key, client, build_messages, reply_tokens, ledger, max_tokens=512)

The reply is looked up by its `CacheKey`; only a miss is sent (and only when there is a client: offline,
a miss comes back empty), and a reply is stored the moment it arrives, before the caller reads it, so a
rerun replays it and a killed run loses only what was in flight. `RequestFailed` (the client gave up on
the request) propagates; nothing is stored then, so the next run asks again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm.cache import CacheKey, ResponseCache
from llm.client import ChatClient
from llm.estimate import prompt_tokens
from llm.usage import RequestLedger, Usage


@dataclass(slots=True)
class Got:
    content: str | None
    """The reply; None when it is not cached and there is no client to ask."""
    usage: Usage = field(default_factory=Usage)
    cached: bool = False
    requests: int = 0


async def cache_first(cache: ResponseCache, key: CacheKey, client: ChatClient | None,
                      messages: Callable[[], list[dict[str, Any]]], reply_tokens: int, ledger: RequestLedger,
                      **extra: Any) -> Got:
    """The cached reply for `key`, else the endpoint's (JSON mode; `extra` request arguments). The
    messages are built only when sent; `reply_tokens` is the expected reply size for the TPM budget."""
    hit = cache.get(key)
    if hit is not None:
        ledger.count("cache_hits")
        return Got(hit.content, hit.usage, cached=True)
    if client is None:
        return Got(None)
    sent = messages()
    completion = await client.complete(sent, estimate=prompt_tokens(sent) + reply_tokens, json=True, **extra)
    content = completion.content or completion.reasoning or ""  # some reasoning models answer there
    cache.put(key, content, completion.usage)
    return Got(content, completion.usage, requests=1)
