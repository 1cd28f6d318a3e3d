"""Which HTTP answers a later request may not meet: one rule for the translator's retries and for
the steps that leave failed records to the next run (translate, download)."""

from __future__ import annotations

RETRYABLE_STATUS = frozenset({408, 409, 425, 429} | set(range(500, 600)) - {501, 505})
"""Timeouts, conflicts, too early, rate limits and server errors; not 501 / 505 (the server will
never do it) nor any other 4xx (the request itself is wrong, or the key)."""


def retryable_status(status: int | None) -> bool:
    return status in RETRYABLE_STATUS


def status_in(reason: str, prefix: str) -> int | None:
    """The status of a rejection reason named `<prefix><status>` (`http_503`), else None."""
    code = reason.removeprefix(prefix)
    return int(code) if code != reason and code.isdigit() else None
