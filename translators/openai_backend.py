"""Backend `openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
DeepSeek, Qwen...) through the official async client.

The memory is consulted first (base.py); what is missing is packed into requests of many
segments (batching.py). Each request holds a `Limits` slot; transient failures (429, 5xx,
timeouts, dropped connections) are retried here with backoff that honours `Retry-After`, so
the client's own retries are off. Segments failing QA get one more try with a stricter prompt.
An endpoint that is not there is not hammered: once a request ends unanswered for a cause that
says so (`DOWN_CAUSES`) before the endpoint answered anything in this run, or `down_streak`
requests in a row do after it did, the run stops with a `TranslatorError` naming the endpoint
and the cause, as it does at once for a rejected key (401), an unknown model (404) or an
account out of quota (429 `insufficient_quota`).
Results go into the memory as each batch finishes, so a killed run loses only what was in
flight. The API key is read from the environment variable the config names; it is never
logged, and error text from the server is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import openai

from common.retry import retryable_status
from translators.base import MemoryFirstTranslator, Missing
from translators.batching import (
    Reply,
    ReplyError,
    RequestFailed,
    RequestTooLarge,
    SegmentOutcome,
    decode_reply,
    encode_units,
    pack,
    send_with_split,
)
from translators.config import TranslatorConfig, unset_api_key_message
from translators.limits import Limits, RetryPolicy, parse_retry_after
from translators.memory import TranslationMemory
from translators.placeholders import restore
from translators.prompts import PROMPTS, system_prompt
from translators.protocol import SegmentResult, TranslatorError, Usage, Verdict
from translators.qa import glossary_terms_in

log = logging.getLogger(__name__)

_FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
_REPLY_REASONS = {"parse_failed", "count_mismatch"}
DOWN_CAUSES = frozenset({"connection_error", "timeout", "http_502", "http_503", "http_504"})
"""Causes that say the endpoint (or the server behind its gateway) is not there, not that the
request was bad: no connection, no answer in time, a gateway with nothing behind it."""
MIN_DOWN_STREAK = 3
"""After some answers, this many requests in a row (or `concurrency`, if more) ending for a
`DOWN_CAUSES` cause mean the endpoint went away; fewer may be a blip outlasting one's retries."""


class OpenAITranslator(MemoryFirstTranslator):
    def __init__(
        self,
        config: TranslatorConfig,
        memory: TranslationMemory,
        *,
        client: Any | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(config, memory)
        if config.prompt_version not in PROMPTS:
            raise TranslatorError(
                f"translator.prompt_version: {config.prompt_version!r} is not a known prompt (known: {sorted(PROMPTS)})"
            )
        key = os.environ.get(config.api_key_env, "")
        if not key:
            raise TranslatorError(unset_api_key_message(config.api_key_env))
        self._secret = key
        self._client = client or openai.AsyncOpenAI(
            api_key=key, base_url=config.base_url, max_retries=0, timeout=config.timeout_s
        )
        self.limits = Limits(config.concurrency, config.requests_per_minute, config.tokens_per_minute)
        self.policy = RetryPolicy(
            config.max_retries, config.backoff_base_s, config.backoff_max_s, config.max_retry_after_s
        )
        self._json_mode = config.json_mode
        self._rng = rng or random.Random()
        self.down_streak = max(MIN_DOWN_STREAK, config.concurrency)
        self._stopped: str | None = None
        """Why this run cannot go on (`_stop`); set, nothing more is sent."""
        self._heard = False
        """Whether the endpoint itself answered anything yet (a translation, or an error of its own)."""
        self._unanswered = 0
        """Requests in a row that ended for a `DOWN_CAUSES` cause since it last answered."""

    async def aclose(self) -> None:
        await self._client.close()

    async def _translate_missing(self, groups: list[list[Missing]]) -> dict[str, SegmentResult]:
        sizes = [(len(g), sum(len(m.masked.text) for m in g)) for g in groups]
        batches = pack(sizes, self.config.batch_segments, self.config.max_batch_chars)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._run_batch([groups[i] for i in b])) for b in batches]
        except BaseExceptionGroup as group:
            raise _first_cause(group) from None
        return {key: result for t in tasks for key, result in t.result().items()}

    async def _run_batch(self, groups: list[list[Missing]]) -> dict[str, SegmentResult]:
        outcomes = await send_with_split(self._send, [[m.masked.text for m in g] for g in groups])
        results: dict[str, SegmentResult] = {}
        retry: list[Missing] = []
        for group, outs in zip(groups, outcomes):
            for m, outcome in zip(group, outs):
                results[m.key] = self._result(m, outcome)
                if not results[m.key].ok and (outcome.text is not None or outcome.reason in _REPLY_REASONS):
                    retry.append(m)
        if retry:
            self.stats.count("strict_retries", len(retry))
            again = await send_with_split(self._send, [[m.masked.text] for m in retry], strict=True)
            for m, outs in zip(retry, again):
                first, second = results[m.key], self._result(m, outs[0])
                # A retry that got no text at all (e.g. HTTP errors) says less than the first answer.
                kept, other = (first, second) if second.text is None and first.text is not None else (second, first)
                kept.usage.add(other.usage)
                kept.attempts += other.attempts
                results[m.key] = kept
        self.memory.put_many(
            ((r.source, r.text, r.verdict) for r in results.values() if r.text is not None),
            source_lang=self.config.source_lang, target_lang=self.config.target_lang,
            model=self.model, prompt_version=self.prompt_version,
        )
        return results

    def _result(self, m: Missing, outcome: SegmentOutcome) -> SegmentResult:
        if outcome.text is None:
            verdict = Verdict.failed(outcome.reason or "failed", outcome.detail)
            return SegmentResult(m.segment.text, None, verdict, "none", outcome.usage, outcome.requests)
        text = restore(m.masked, outcome.text)
        verdict = self._check(m.segment.text, text, m.segment.kind)
        return SegmentResult(m.segment.text, text, verdict, "model", outcome.usage, outcome.requests)

    async def _send(self, units: Sequence[Sequence[str]], strict: bool) -> Reply:
        texts = [t for u in units for t in u]
        glossary = glossary_terms_in(texts, self.config.glossary)
        system = system_prompt(self.prompt_version, self.config.source_lang, self.config.target_lang, glossary, strict)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": encode_units(units)}]
        estimate = 2 * _estimate_tokens(system + messages[1]["content"])
        attempt = 0
        while True:
            args: dict[str, Any] = {}
            try:
                async with self.limits.slot(estimate):
                    if self._stopped is not None:
                        raise TranslatorError(self._stopped)
                    args = self._request_args(messages)  # built once a slot is free: JSON mode may be off by then
                    self.stats.count("requests")
                    response = await self._client.chat.completions.create(**args)
            except openai.APIError as e:
                await asyncio.sleep(self._after_error(e, attempt, sent_json_mode="response_format" in args))
                attempt += 1
                continue
            self.stats.count("requests_answered")
            self._alive()
            usage = _usage(response)
            self.limits.settle(estimate, usage.total)
            self.stats.add_usage(self.model, usage)
            message = response.choices[0].message if response.choices else None
            content, reasoning = (message.content, _reasoning(message)) if message else (None, None)
            try:
                return Reply(decode_reply(content, [len(u) for u in units], usage, reasoning), usage)
            except ReplyError as e:
                self.stats.count("reply_errors")
                log.info("reply for %d segments not usable (%s); splitting", len(texts), e.reason)
                raise

    def _request_args(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        args: dict[str, Any] = {"model": self.model, "messages": messages, "timeout": self.config.timeout_s}
        if self._json_mode:
            args["response_format"] = {"type": "json_object"}
        if self.config.temperature is not None:
            args["temperature"] = self.config.temperature
        return args

    def _after_error(self, e: openai.APIError, attempt: int, sent_json_mode: bool = False) -> float:
        """Seconds to wait before trying again; raises when trying again is pointless.

        A 400 about `response_format` switches JSON mode off and resends; requests that were
        already in flight with it (sent before the switch) are resent too, not failed."""
        status = getattr(e, "status_code", None)
        message = self._redact(str(e.message))
        if status is not None and _reason(e, status) not in DOWN_CAUSES:
            self._alive()  # an error of the endpoint's own: it is there
        if isinstance(e, openai.BadRequestError) and sent_json_mode and "response_format" in message.lower():
            if self._json_mode:
                self._json_mode = False
                self.stats.count("json_mode_disabled")
                log.warning("endpoint rejects JSON mode (%s); continuing without it", message[:200])
            return 0.0
        if isinstance(e, _FATAL):
            raise self._stop(
                f"{self.endpoint}: HTTP {status} for model {self.model!r}: "
                f"{message[:300]}. Check translator.base_url, translator.model and the key in "
                f"${self.config.api_key_env}."
            ) from None
        if isinstance(e, openai.RateLimitError) and getattr(e, "code", None) == "insufficient_quota":
            raise self._stop(
                f"{self.endpoint}: HTTP 429 insufficient_quota for model {self.model!r}: {message[:300]}. The "
                f"account of the key in ${self.config.api_key_env} has no quota left (not a rate limit: waiting "
                "does not help); add credit or use another key, then run the same command again: only what is "
                "still missing is sent."
            ) from None
        if _over_context(e, status, message):
            self.stats.count("context_splits")
            log.info("request over the context length (%s); splitting", message[:120])
            raise RequestTooLarge(f"HTTP {status}: {message[:200]}")
        reason = _reason(e, status)
        retryable = isinstance(e, openai.APIConnectionError) or retryable_status(status)
        if not retryable:
            raise self._gave_up(reason, message[:300])
        retry_after = parse_retry_after(e.response.headers) if isinstance(e, openai.APIStatusError) else None
        if retry_after is not None and retry_after > self.policy.max_retry_after_s:
            raise self._gave_up(reason, f"Retry-After {retry_after:.0f}s exceeds translator.max_retry_after_s")
        if attempt >= self.policy.max_retries:
            raise self._gave_up(reason, f"gave up after {attempt + 1} attempts: {message[:200]}")
        delay = self.policy.delay(attempt, retry_after, self._rng)
        if status == 429:
            self.limits.cool_down(delay)
        self.stats.count("retries")
        log.warning("%s (%s); retry %d/%d in %.2fs", reason, message[:120], attempt + 1, self.policy.max_retries, delay)
        return delay

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    @property
    def endpoint(self) -> str:
        """The base URL for messages: the OpenAI default when unset; never user:password or a query."""
        return scrub_url(self.config.base_url or "https://api.openai.com/v1")

    def _stop(self, why: str) -> TranslatorError:
        """The error that ends the run; requests waiting for a slot are not sent after it."""
        self._stopped = why
        return TranslatorError(why)

    def _alive(self) -> None:
        self._heard, self._unanswered = True, 0

    def _gave_up(self, cause: str, detail: str) -> RequestFailed:
        """The RequestFailed for a request that ends unanswered here, or a TranslatorError when
        the endpoint looks gone: nothing more is sent then (see `DOWN_CAUSES`)."""
        self.stats.failed_requests[cause] += 1
        if cause not in DOWN_CAUSES:
            return RequestFailed(cause, detail)
        self._unanswered += 1
        if self._heard and self._unanswered < self.down_streak:
            return RequestFailed(cause, detail)
        answered = self.stats.counts["requests_answered"]
        what = ("no request of this run got an answer" if not self._heard else
                f"it stopped answering: the last {self._unanswered} requests got none, after {answered} that did")
        raise self._stop(
            f"endpoint {self.endpoint} (model {self.model!r}) is unreachable: {what} ({cause}: {detail[:200]}). "
            "Nothing more is sent; every translation received is kept in the translation memory. Check "
            "translator.base_url and that the server is up (for timeouts: translator.timeout_s), then run the "
            "same command again: only what is still missing is sent."
        ) from None


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """A TaskGroup wraps what its tasks raised; callers want the error itself (the first one)."""
    first = group.exceptions[0]
    return _first_cause(first) if isinstance(first, BaseExceptionGroup) else first


def scrub_url(url: str) -> str:
    """`url` without user:password@, query or fragment: what may appear in a message or a log."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}{parts.path}" if parts.scheme else host + parts.path


_CONTEXT_RE = re.compile(r"context[_ ]length[_ ]exceeded|maximum context length|context window", re.I)


def _over_context(e: openai.APIError, status: int | None, message: str) -> bool:
    """Whether the endpoint refused the request as too long for the model: 413, or a 400 with
    OpenAI's code `context_length_exceeded` or a message saying so (vLLM: "maximum context length")."""
    if status == 413:
        return True
    if status != 400:
        return False
    return getattr(e, "code", None) == "context_length_exceeded" or bool(_CONTEXT_RE.search(message))


def _reason(e: openai.APIError, status: int | None) -> str:
    if isinstance(e, openai.APITimeoutError):
        return "timeout"
    if isinstance(e, openai.APIConnectionError):
        return "connection_error"
    return f"http_{status}"


def _usage(response: Any) -> Usage:
    u = getattr(response, "usage", None)
    if u is None:
        return Usage()
    return Usage(int(u.prompt_tokens or 0), int(u.completion_tokens or 0))


def _reasoning(message: Any) -> str | None:
    """The reasoning an endpoint returns beside `content`: `reasoning_content` (vLLM, DeepSeek)
    or `reasoning` (newer vLLM, OpenRouter); the client keeps such extra fields as attributes."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if isinstance(value, str) and value.strip():
            return value
    return None


def _estimate_tokens(text: str) -> int:
    """A rough upper bound for the TPM limiter; corrected by `Limits.settle` with the real count."""
    return len(text.encode("utf-8")) // 3 + 1
