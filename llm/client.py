"""`ChatClient`: one chat-completions request, sent within the endpoint's limits until it is
answered or cannot be.

Each request holds a `Limits` slot (concurrency, RPM, TPM, a 429's cool-down for everyone);
transient failures (429, 5xx, timeouts, dropped connections) are retried here with backoff that
honours `Retry-After`, so the `openai` client's own retries are off. A 400 about
`response_format` switches JSON mode off for the run and resends. An endpoint that is not there
is not hammered: once a request ends unanswered for a cause that says so (`DOWN_CAUSES`) before
the endpoint answered anything in this run, or `down_streak` requests in a row do after it did,
the run stops with an `EndpointError` naming the endpoint and the cause, as it does at once for a
rejected key (401/403), an unknown model (404) or an account out of quota (429
`insufficient_quota`). The API key is read from the environment variable the config names; it is
never logged, and error text from the server is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
from dataclasses import dataclass
from typing import Any

import openai

from common.retry import retryable_status
from llm.config import EndpointConfig, scrub_url, unset_api_key_message
from llm.errors import EndpointError, RequestFailed, RequestTooLarge
from llm.limits import Limits, RetryPolicy, parse_retry_after
from llm.usage import RequestLedger, Usage, usage_of

log = logging.getLogger(__name__)

_FATAL = (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)
DOWN_CAUSES = frozenset({"connection_error", "timeout", "http_502", "http_503", "http_504"})
"""Causes that say the endpoint (or the server behind its gateway) is not there, not that the
request was bad: no connection, no answer in time, a gateway with nothing behind it."""
MIN_DOWN_STREAK = 3
"""After some answers, this many requests in a row (or `concurrency`, if more) ending for a
`DOWN_CAUSES` cause mean the endpoint went away; fewer may be a blip outlasting one's retries."""


@dataclass(slots=True)
class Completion:
    content: str | None
    reasoning: str | None
    """What reasoning models return beside `content` (`reasoning_content`, `reasoning`)."""
    usage: Usage
    finish_reason: str | None = None


class ChatClient:
    """Requests to one endpoint for one run. `section` names the recipe section in messages;
    `kept` says what survives a stop ("every translation received is kept in ...")."""

    def __init__(
        self,
        config: EndpointConfig,
        ledger: RequestLedger,
        *,
        kept: str = "every reply received is kept",
        client: Any | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.section = config.SECTION
        key = os.environ.get(config.api_key_env, "")
        if not key:
            raise EndpointError(unset_api_key_message(config.api_key_env, self.section))
        self._secret = key
        self._client = client or openai.AsyncOpenAI(
            api_key=key, base_url=config.base_url, max_retries=0, timeout=config.timeout_s
        )
        self.ledger = ledger
        self.kept = kept
        self.limits = Limits(config.concurrency, config.requests_per_minute, config.tokens_per_minute)
        self.policy = RetryPolicy(
            config.max_retries, config.backoff_base_s, config.backoff_max_s, config.max_retry_after_s
        )
        self.json_mode = config.json_mode
        self._rng = rng or random.Random()
        self.down_streak = max(MIN_DOWN_STREAK, config.concurrency)
        self._stopped: str | None = None
        """Why this run cannot go on (`_stop`); set, nothing more is sent."""
        self._heard = False
        """Whether the endpoint itself answered anything yet (a reply, or an error of its own)."""
        self._unanswered = 0
        """Requests in a row that ended for a `DOWN_CAUSES` cause since it last answered."""

    @property
    def model(self) -> str:
        return self.config.model

    async def aclose(self) -> None:
        await self._client.close()

    async def complete(
        self, messages: list[dict[str, Any]], *, estimate: int, json: bool = True, **extra: Any
    ) -> Completion:
        """Send `messages` until answered. `estimate`: tokens for the TPM bucket (settled with the
        real count); `json`: ask for JSON mode where the endpoint has it; `extra`: more
        request arguments (`max_tokens`, `seed`...). Raises `RequestFailed` (gave up on this
        request), `RequestTooLarge` (over the context length) or `EndpointError` (stop the run)."""
        attempt = 0
        while True:
            args: dict[str, Any] = {}
            try:
                async with self.limits.slot(estimate):
                    if self._stopped is not None:
                        raise EndpointError(self._stopped)
                    args = self._request_args(messages, json, extra)  # built once a slot is free: JSON mode may be off by then
                    self.ledger.count("requests")
                    response = await self._client.chat.completions.create(**args)
            except openai.APIError as e:
                await asyncio.sleep(self._after_error(e, attempt, sent_json_mode="response_format" in args))
                attempt += 1
                continue
            self.ledger.count("requests_answered")
            self._alive()
            usage = usage_of(response)
            self.limits.settle(estimate, usage.total)
            self.ledger.add_usage(self.model, usage)
            choice = response.choices[0] if response.choices else None
            message = choice.message if choice else None
            content, reasoning = (message.content, _reasoning(message)) if message else (None, None)
            return Completion(content, reasoning, usage, getattr(choice, "finish_reason", None))

    def _request_args(self, messages: list[dict[str, Any]], json: bool, extra: dict[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {"model": self.model, "messages": messages, "timeout": self.config.timeout_s}
        if json and self.json_mode:
            args["response_format"] = {"type": "json_object"}
        if self.config.temperature is not None:
            args["temperature"] = self.config.temperature
        args.update(extra)
        return args

    def _after_error(self, e: openai.APIError, attempt: int, sent_json_mode: bool = False) -> float:
        """Seconds to wait before trying again; raises when trying again is pointless.

        A 400 about `response_format` switches JSON mode off and resends; requests that were
        already in flight with it (sent before the switch) are resent too, not failed."""
        status = getattr(e, "status_code", None)
        message = self.redact(str(e.message))
        if status is not None and _reason(e, status) not in DOWN_CAUSES:
            self._alive()  # an error of the endpoint's own: it is there
        if isinstance(e, openai.BadRequestError) and sent_json_mode and "response_format" in message.lower():
            if self.json_mode:
                self.json_mode = False
                self.ledger.count("json_mode_disabled")
                log.warning("endpoint rejects JSON mode (%s); continuing without it", message[:200])
            return 0.0
        s = self.section
        if isinstance(e, _FATAL):
            raise self._stop(
                f"{self.endpoint}: HTTP {status} for model {self.model!r}: "
                f"{message[:300]}. Check {s}.base_url, {s}.model and the key in ${self.config.api_key_env}."
            ) from None
        if isinstance(e, openai.RateLimitError) and getattr(e, "code", None) == "insufficient_quota":
            raise self._stop(
                f"{self.endpoint}: HTTP 429 insufficient_quota for model {self.model!r}: {message[:300]}. The "
                f"account of the key in ${self.config.api_key_env} has no quota left (not a rate limit: waiting "
                "does not help); add credit or use another key, then run the same command again: only what is "
                "still missing is sent."
            ) from None
        if _over_context(e, status, message):
            self.ledger.count("context_splits")
            log.info("request over the context length (%s)", message[:120])
            raise RequestTooLarge(f"HTTP {status}: {message[:200]}")
        reason = _reason(e, status)
        retryable = isinstance(e, openai.APIConnectionError) or retryable_status(status)
        if not retryable:
            raise self._gave_up(reason, message[:300])
        retry_after = parse_retry_after(e.response.headers) if isinstance(e, openai.APIStatusError) else None
        if retry_after is not None and retry_after > self.policy.max_retry_after_s:
            raise self._gave_up(reason, f"Retry-After {retry_after:.0f}s exceeds {s}.max_retry_after_s")
        if attempt >= self.policy.max_retries:
            raise self._gave_up(reason, f"gave up after {attempt + 1} attempts: {message[:200]}")
        delay = self.policy.delay(attempt, retry_after, self._rng)
        if status == 429:
            self.limits.cool_down(delay)
        self.ledger.count("retries")
        log.warning("%s (%s); retry %d/%d in %.2fs", reason, message[:120], attempt + 1, self.policy.max_retries, delay)
        return delay

    def redact(self, text: str) -> str:
        """`text` with the API key replaced by ***: for anything the server said."""
        return text.replace(self._secret, "***") if self._secret else text

    @property
    def endpoint(self) -> str:
        """The base URL for messages: the OpenAI default when unset; never user:password or a query."""
        return scrub_url(self.config.base_url or "https://api.openai.com/v1")

    def _stop(self, why: str) -> EndpointError:
        """The error that ends the run; requests waiting for a slot are not sent after it."""
        self._stopped = why
        return EndpointError(why)

    def _alive(self) -> None:
        self._heard, self._unanswered = True, 0

    def _gave_up(self, cause: str, detail: str) -> RequestFailed:
        """The RequestFailed for a request that ends unanswered here, or an EndpointError when
        the endpoint looks gone: nothing more is sent then (see `DOWN_CAUSES`)."""
        self.ledger.failed_requests[cause] += 1
        if cause not in DOWN_CAUSES:
            return RequestFailed(cause, detail)
        self._unanswered += 1
        if self._heard and self._unanswered < self.down_streak:
            return RequestFailed(cause, detail)
        answered = self.ledger.counts["requests_answered"]
        what = ("no request of this run got an answer" if not self._heard else
                f"it stopped answering: the last {self._unanswered} requests got none, after {answered} that did")
        s = self.section
        raise self._stop(
            f"endpoint {self.endpoint} (model {self.model!r}) is unreachable: {what} ({cause}: {detail[:200]}). "
            f"Nothing more is sent; {self.kept}. Check {s}.base_url and that the server is up (for timeouts: "
            f"{s}.timeout_s), then run the same command again: only what is still missing is sent."
        ) from None


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


def _reasoning(message: Any) -> str | None:
    """The reasoning an endpoint returns beside `content`: `reasoning_content` (vLLM, DeepSeek)
    or `reasoning` (newer vLLM, OpenRouter); the client keeps such extra fields as attributes."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if isinstance(value, str) and value.strip():
            return value
    return None
