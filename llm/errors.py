"""What the client layer raises: the run cannot go on, or one request ended unanswered."""

from __future__ import annotations


class EndpointError(RuntimeError):
    """The endpoint cannot serve this run at all (credentials, unknown model, no quota, down);
    the message names the endpoint and what to change. Nothing more is sent after it."""


class RequestFailed(RuntimeError):
    """The request itself failed after all retries (HTTP errors, timeouts); `reason` is a code
    such as `timeout`, `connection_error`, `http_500`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class RequestTooLarge(RequestFailed):
    """The endpoint rejected the request as over its context length (400 `context_length_exceeded`,
    vLLM's "maximum context length", 413): a smaller request may fit."""

    def __init__(self, detail: str) -> None:
        super().__init__("too_long", detail)
