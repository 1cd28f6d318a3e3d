"""`Generator`: one Chinese instruction record per (image, kind, n), cache first.

For each job the reply is looked up in the response cache by (model, prompt id, kind, context
hash, sampling settings); only a miss is sent (through `llm.ChatClient`: limits, retries, a dead
endpoint stops the run), and every reply is stored the moment it arrives, before it is checked. A
reply that fails parsing or a quality check is asked for once more with a stricter prompt (its own
cache key), so a rerun replays the same two replies and sends nothing. Offline (`backend: cache`)
a miss is the rejection `cache_miss`.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from generators.checks import Bounds, check_record, unsupported_objects
from generators.config import GenerateConfig, Kind, sampling_of
from generators.context import Context
from generators.objects import vocabulary
from generators.prompt_set import PromptSet
from generators.reply import ReplyError, parse_reply
from llm.cache import CacheKey, ResponseCache
from llm.cached import cache_first
from llm.client import ChatClient
from llm.errors import RequestFailed
from llm.estimate import Estimate, prompt_tokens, text_tokens
from llm.together import all_in_order
from llm.usage import RequestLedger, Usage

log = logging.getLogger(__name__)
IMAGE = "<image>"
REPLY_REASONS = frozenset({"parse_failed", "wrong_shape", "empty_turn", "unanswered_question", "too_many_turns"})
CHECK_REASONS = frozenset({"not_chinese", "not_english", "mixed_script", "too_short", "too_long",
                           "gives_away_context", "refusal", "duplicate_question"})
"""Reasons a stricter second request may fix; request failures (http_*, timeout) are retried by the
client and, failing that, left for the next run."""


@dataclass(slots=True)
class Job:
    context: Context
    kind: Kind
    index: int
    """0..count-1: the n-th record of this kind for this image."""
    image_url: str | None = None
    """A base64 data URL of the image when `context` includes it."""


@dataclass(slots=True)
class Outcome:
    job: Job
    messages: list[dict[str, str]] | None
    reason: str | None = None
    detail: str = ""
    usage: Usage = field(default_factory=Usage)
    requests: int = 0
    cached: int = 0
    """Replies served from the cache (0, 1 or 2)."""
    unsupported: list[str] = field(default_factory=list)
    prompt_id: str = ""
    context_hash: str = ""
    reply: str | None = None
    """The reply text last read (for a rejection row)."""
    request_failed: bool = False
    """No reply: the request failed (`reason` is the client's: http_500, timeout, too_long...)."""


class GenerateLedger(RequestLedger):
    """The client's counts plus what generation did: cache hits, strict retries, unsupported objects."""

    def __init__(self, config: GenerateConfig) -> None:
        super().__init__(prices=config.price.prices())
        self.unsupported: Counter = Counter()
        """kind -> object mentions no context supports."""
        self.unsupported_records: Counter = Counter()

    def always_reported(self) -> tuple[str, ...]:
        return ("requests", "retries", "cache_hits", "strict_retries")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out.update({f"unsupported_objects[{k}]": n for k, n in sorted(self.unsupported.items())})
        out.update({f"records_with_unsupported_objects[{k}]": n for k, n in sorted(self.unsupported_records.items())})
        return out


class Generator:
    def __init__(self, config: GenerateConfig, prompts: PromptSet, cache: ResponseCache,
                 client: ChatClient | None, ledger: GenerateLedger) -> None:
        self.config, self.prompts, self.cache, self.client, self.ledger = config, prompts, cache, client, ledger
        self.names = vocabulary(config.object_names)

    def context_hash(self, job: Job) -> str:
        return job.context.hash(with_image=self.config.context != "annotations")

    def key(self, job: Job, strict_reason: str | None) -> CacheKey:
        return CacheKey(self.config.model, self.prompts.prompt_id, job.kind, self.context_hash(job),
                        sampling_of(self.config, strict_reason, job.index))

    def request(self, job: Job, strict_reason: str | None) -> list[dict[str, Any]]:
        """The chat messages for `job`; the image goes only where `generate.context` says so (the
        cache key's context hash covers it only then)."""
        mode = self.config.context
        text = job.context.text() if mode != "image" else "请看这张图片。"
        image = job.image_url if mode != "annotations" else None
        if mode != "annotations" and image is None:
            raise ValueError(f"generate.context is {mode!r} but the job for {job.context.image} has no image")
        return self.prompts.messages(job.kind, text, image, strict_reason)

    async def run(self, job: Job) -> Outcome:
        """One record or a rejection for `job`; raises only `EndpointError` (the run cannot go on)."""
        first = await self._attempt(job, None)
        if first.messages is not None or first.request_failed or first.reason not in REPLY_REASONS | CHECK_REASONS:
            return first
        self.ledger.count("strict_retries")
        second = await self._attempt(job, first.reason)
        second.usage.add(first.usage)
        second.requests += first.requests
        second.cached += first.cached
        return second

    async def _attempt(self, job: Job, strict_reason: str | None) -> Outcome:
        key = self.key(job, strict_reason)
        out = Outcome(job, None, prompt_id=self.prompts.prompt_id, context_hash=key.context_hash)
        try:
            got = await cache_first(self.cache, key, self.client, lambda: self.request(job, strict_reason),
                                    self.config.max_tokens // 2, self.ledger, **self._extra())
        except RequestFailed as e:
            out.reason, out.detail, out.requests, out.request_failed = e.reason, e.detail, 1, True
            return out
        if got.content is None:
            out.reason, out.detail = "cache_miss", f"no cached reply for {job.kind} of this context (backend: cache)"
            return out
        out.cached, out.usage, out.requests = int(got.cached), got.usage, got.requests
        self._read(out, got.content)
        return out

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"max_tokens": self.config.max_tokens}
        if self.config.seed is not None:
            extra["seed"] = self.config.seed
        return extra

    def _read(self, out: Outcome, content: str) -> None:
        out.reply = content
        job, kc = out.job, self.config.kinds[out.job.kind]
        try:
            turns = parse_reply(job.kind, content, kc.max_turns)
        except ReplyError as e:
            out.reason, out.detail = e.reason, e.detail
            return
        if job.kind == "detail":
            turns = [(self._instruction(out.context_hash, job.index), turns[0][1])]
        bounds = Bounds(kc.min_chars, kc.max_chars, self.config.min_cjk_ratio, self.config.language)
        if failed := check_record(turns, job.context, bounds):
            out.reason, out.detail = failed
            return
        out.unsupported = unsupported_objects(turns, job.context, self.names)
        if out.unsupported:
            self.ledger.unsupported[job.kind] += len(out.unsupported)
            self.ledger.unsupported_records[job.kind] += 1
        out.messages = to_messages(turns)

    def _instruction(self, context_hash: str, index: int) -> str:
        """A detail record's question: one of the instructions, chosen by the context (stable)."""
        options = self.prompts.detail_instructions
        return options[int(hashlib.sha256(f"{context_hash}:{index}".encode()).hexdigest(), 16) % len(options)]

    def estimate(self, jobs: list[Job], estimate: Estimate) -> None:
        """Add `jobs` to `estimate` without sending: cache hits, or the request each would send."""
        for job in jobs:
            estimate.items += 1
            if self.cache.get(self.key(job, None)) is not None:
                estimate.cache_hits += 1
                continue
            placeholder = "data:image/jpeg;base64," if self.config.context != "annotations" else None
            messages = self.request(replace(job, image_url=job.image_url or placeholder), None)  # counted, not sent
            prefix = prompt_tokens(messages[:-1])
            output = sum(text_tokens(reply) for _, reply in self.prompts.kinds[job.kind].examples)
            output //= max(1, len(self.prompts.kinds[job.kind].examples))
            estimate.add(prompt_tokens(messages), output, prefix)


def to_messages(turns: list[tuple[str, str]]) -> list[dict[str, str]]:
    """Alternating user / assistant messages, `<image>` before the first question."""
    messages: list[dict[str, str]] = []
    for i, (q, a) in enumerate(turns):
        messages += [{"role": "user", "content": f"{IMAGE}\n{q}" if i == 0 else q},
                     {"role": "assistant", "content": a}]
    return messages


async def run_all(generator: Generator, jobs: list[Job]) -> list[Outcome]:
    """Every job at once, in job order; an `EndpointError` cancels the rest (llm.together)."""
    return await all_in_order(generator.run(j) for j in jobs)
