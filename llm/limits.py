"""Staying inside an endpoint's limits: concurrency, requests and tokens per minute, backoff.

`Limits.slot(tokens)` is held around every request: it waits for a free connection, for any
cool-down a 429 imposed on everyone, and for RPM/TPM budget. `RetryPolicy.delay` is the wait
before a retry: the server's `Retry-After` when it gave one, exponential backoff with jitter
otherwise.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
_BURST_SECONDS = 10.0
"""A bucket holds this many seconds' worth of budget: short bursts pass, a minute's does not."""


class RateLimiter:
    """Token bucket refilled at `per_minute / 60` per second. A request larger than the bucket
    waits for a full bucket and then goes into debt, so nothing waits forever."""

    def __init__(self, per_minute: float, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        if per_minute <= 0:
            raise ValueError(f"per_minute must be > 0, got {per_minute}")
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * _BURST_SECONDS)
        self._tokens = self.capacity
        self._clock, self._sleep = clock, sleep
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, amount: float = 1.0) -> None:
        async with self._lock:
            need = min(amount, self.capacity)
            while True:
                self._refill()
                if self._tokens >= need:
                    self._tokens -= amount
                    return
                await self._sleep((need - self._tokens) / self.rate)

    def charge(self, amount: float) -> None:
        """Correct an estimate once the real cost is known (negative gives budget back)."""
        self._tokens -= amount


class Limits:
    def __init__(
        self,
        concurrency: int,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._sem = asyncio.Semaphore(concurrency)
        self.rpm = RateLimiter(requests_per_minute, clock, sleep) if requests_per_minute else None
        self.tpm = RateLimiter(tokens_per_minute, clock, sleep) if tokens_per_minute else None
        self._clock, self._sleep = clock, sleep
        self._resume_at = 0.0

    def cool_down(self, seconds: float) -> None:
        """Hold every request (not only the one that got a 429) for `seconds`."""
        self._resume_at = max(self._resume_at, self._clock() + seconds)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        async with self._sem:
            while (wait := self._resume_at - self._clock()) > 0:
                await self._sleep(wait)
            if self.rpm:
                await self.rpm.acquire(1)
            if self.tpm:
                await self.tpm.acquire(estimated_tokens)
            yield

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tpm:
            self.tpm.charge(actual_tokens - estimated_tokens)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_retries: int = 5
    base_s: float = 0.5
    max_s: float = 30.0
    max_retry_after_s: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based). With `retry_after` the server
        decides; a little jitter spreads the herd. Without it: equal-jitter exponential backoff."""
        rng = rng or random
        if retry_after is not None:
            return retry_after + rng.uniform(0, min(1.0, 0.1 * retry_after))
        ceiling = min(self.max_s, self.base_s * 2**attempt)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent."""
    if not headers:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))
