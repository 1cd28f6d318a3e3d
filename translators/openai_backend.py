"""Backend `openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
DeepSeek, Qwen...) through the official async client.

The memory is consulted first (base.py); what is missing is packed into requests of many
segments (batching.py). Each request holds a `Limits` slot; transient failures (429, 5xx,
timeouts, dropped connections) are retried here with backoff that honours `Retry-After`, so
the client's own retries are off. Segments failing QA get one more try with a stricter prompt.
Results go into the memory as each batch finishes, so a killed run loses only what was in
flight. The API key is read from the environment variable the config names; it is never
logged, and error text from the server is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import openai

from translators.base import MemoryFirstTranslator, Missing
from translators.batching import (
    Reply, ReplyError, RequestFailed, SegmentOutcome, decode_reply, encode_units, pack, send_with_split,
)
from translators.config import TranslatorConfig
from translators.limits import Limits, RetryPolicy, parse_retry_after
from translators.memory import TranslationMemory
from translators.placeholders import restore
from translators.prompts import PROMPTS, system_prompt
from translators.protocol import SegmentResult, TranslatorError, Usage, Verdict
from translators.qa import glossary_terms_in

log = logging.getLogger(__name__)

_FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
_REPLY_REASONS = {"parse_failed", "count_mismatch"}


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
            raise TranslatorError(
                f"translator.api_key_env: environment variable {config.api_key_env} is not set; export the API key "
                f"in it (for a local endpoint without keys any value works, e.g. {config.api_key_env}=EMPTY)"
            )
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
                    args = self._request_args(messages)  # built once a slot is free: JSON mode may be off by then
                    self.stats.count("requests")
                    response = await self._client.chat.completions.create(**args)
            except openai.APIError as e:
                await asyncio.sleep(self._after_error(e, attempt, sent_json_mode="response_format" in args))
                attempt += 1
                continue
            usage = _usage(response)
            self.limits.settle(estimate, usage.total)
            self.stats.add_usage(self.model, usage)
            content = response.choices[0].message.content if response.choices else None
            try:
                return Reply(decode_reply(content, [len(u) for u in units], usage), usage)
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
        if isinstance(e, openai.BadRequestError) and sent_json_mode and "response_format" in message.lower():
            if self._json_mode:
                self._json_mode = False
                self.stats.count("json_mode_disabled")
                log.warning("endpoint rejects JSON mode (%s); continuing without it", message[:200])
            return 0.0
        if isinstance(e, _FATAL):
            raise TranslatorError(
                f"{self.config.base_url or 'https://api.openai.com/v1'}: HTTP {status} for model {self.model!r}: "
                f"{message[:300]}. Check translator.base_url, translator.model and the key in "
                f"${self.config.api_key_env}."
            ) from None
        reason = _reason(e, status)
        retryable = isinstance(e, openai.APIConnectionError) or status in (408, 409, 429) or (status or 0) >= 500
        if not retryable:
            raise RequestFailed(reason, message[:300])
        retry_after = parse_retry_after(e.response.headers) if isinstance(e, openai.APIStatusError) else None
        if retry_after is not None and retry_after > self.policy.max_retry_after_s:
            raise RequestFailed(reason, f"Retry-After {retry_after:.0f}s exceeds translator.max_retry_after_s")
        if attempt >= self.policy.max_retries:
            raise RequestFailed(reason, f"gave up after {attempt + 1} attempts: {message[:200]}")
        delay = self.policy.delay(attempt, retry_after, self._rng)
        if status == 429:
            self.limits.cool_down(delay)
        self.stats.count("retries")
        log.warning("%s (%s); retry %d/%d in %.2fs", reason, message[:120], attempt + 1, self.policy.max_retries, delay)
        return delay

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    """A TaskGroup wraps what its tasks raised; callers want the error itself (the first one)."""
    first = group.exceptions[0]
    return _first_cause(first) if isinstance(first, BaseExceptionGroup) else first


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


def _estimate_tokens(text: str) -> int:
    """A rough upper bound for the TPM limiter; corrected by `Limits.settle` with the real count."""
    return len(text.encode("utf-8")) // 3 + 1
