"""A loopback OpenAI-compatible server (`POST /v1/chat/completions`) for tests and benchmarks.

It "translates" deterministically: every English word becomes its entry in a small
dictionary, or else two CJK characters derived from a hash of the word; articles vanish;
mask tokens `⟦n⟧`, digits and newlines are kept; ASCII punctuation becomes full-width. When
the user message is a JSON array (the batch wire format) each string in it is translated and
the reply is `{"t": [...]}` of the same shape; any other user message is translated as plain
text (the naive one-segment-per-request client of the benchmark).

Tokens are counted the same simple way on both sides, so ratios are meaningful:
`count_tokens(text) = ceil(utf8_bytes / 4)`; `prompt_tokens` is the sum over the request's
messages, `completion_tokens` that of the reply content.

Faults are injected with `add_fault` and fire `times` times (None: always) on requests whose
user message contains `match` (None: any), and with `probability` on that share of them (drawn
from the server's seeded RNG, so a run is repeatable):
- request-level: `rate_limit` (429 + Retry-After), `server_error` (500), `hang` (no answer
  until `hang_s` passes or the server stops), `malformed_json`, `wrong_length` (one item too few),
  `disconnect` (the connection is closed without any answer)
- segment-level, on the matching strings only: `drop_mask` (first ⟦n⟧ removed), `english_echo`
  (sent back untranslated), `refusal` ("作为一个AI语言模型，我无法翻译...")
`reject_json_mode=True` makes it answer 400 to `response_format`, like endpoints without JSON mode.
`echo_auth=True` makes every error body repeat the request's Authorization header, as a careless
proxy might, so tests can check that the client never shows it.
`max_segments=N` makes it refuse requests of more than N strings as over its context length, as
`context_error` says: "openai" (400 `context_length_exceeded`), "vllm" (400 "maximum context
length") or "413" (Payload Too Large).
`reply_as(content) -> dict` rewrites each answer's message fields, e.g. to answer as a reasoning
model does (`<think>...</think>` before the JSON, or the JSON in `reasoning_content`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from support.loopback import LoopbackHTTPServer

FaultKind = Literal[
    "rate_limit", "server_error", "hang", "malformed_json", "wrong_length", "disconnect", "drop_mask",
    "english_echo", "refusal",
]
SEGMENT_FAULTS = {"drop_mask", "english_echo", "refusal"}
REFUSAL = "作为一个AI语言模型，我无法翻译这段内容。"

DICTIONARY = {
    "a": "", "an": "", "the": "", "is": "是", "are": "是", "what": "什么", "color": "颜色", "colour": "颜色",
    "red": "红色", "blue": "蓝色", "green": "绿色", "yellow": "黄色", "white": "白色", "black": "黑色",
    "cat": "猫", "cats": "猫", "dog": "狗", "dogs": "狗", "car": "汽车", "man": "男人", "woman": "女人",
    "how": "怎么", "many": "多少", "there": "那里", "in": "在", "on": "在", "of": "的", "image": "图片",
    "picture": "图片", "photo": "照片", "yes": "是", "no": "否", "and": "和", "with": "带着", "this": "这个",
    "starbucks": "星巴克", "describe": "描述", "where": "哪里", "shape": "形状", "circle": "圆形",
}
_TOKEN_RE = re.compile(r"⟦\s*\d+\s*⟧|[A-Za-z]+(?:'[A-Za-z]+)?|\d+|\n|[ \t]+|.", re.S)
_MASK_RE = re.compile(r"⟦\s*\d+\s*⟧")
_PUNCT = {"?": "？", ",": "，", ".": "。", "!": "！", ":": "：", ";": "；"}


def count_tokens(text: str) -> int:
    return (len(text.encode("utf-8")) + 3) // 4


def pseudo_word(word: str) -> str:
    h = int(hashlib.sha1(word.lower().encode()).hexdigest(), 16)
    return chr(0x4E00 + h % 0x4000) + chr(0x4E00 + (h >> 16) % 0x4000)


def dictionary_translate(text: str, dictionary: dict[str, str] = DICTIONARY) -> str:
    out = []
    for tok in _TOKEN_RE.findall(text):
        if tok[0].isascii() and tok[0].isalpha():
            word = dictionary.get(tok.lower())
            out.append(word if word is not None else pseudo_word(tok))
        elif tok.isspace() and tok != "\n":
            continue
        else:
            out.append(_PUNCT.get(tok, tok))
    return "".join(out)


@dataclass
class Fault:
    kind: FaultKind
    match: str | None = None
    times: int | None = 1
    retry_after: str = "1"
    probability: float | None = None
    fired: int = 0

    def applies(self, text: str, rng: random.Random) -> bool:
        return ((self.times is None or self.fired < self.times) and (self.match is None or self.match in text)
                and (self.probability is None or rng.random() < self.probability))


@dataclass
class Stats:
    requests: int = 0
    ok: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    segments: int = 0
    """Strings received inside JSON-array requests that were answered with 200."""
    statuses: dict[int, int] = field(default_factory=dict)
    active: int = 0
    """Requests being handled right now."""
    peak_active: int = 0
    """The most requests ever handled at once."""
    faults: dict[str, int] = field(default_factory=dict)
    """Faults fired, by kind."""


class ChatServer:
    def __init__(
        self,
        api_key: str = "sk-test-key",
        latency_s: float = 0.0,
        dictionary: dict[str, str] | None = None,
        hang_s: float = 30.0,
        reject_json_mode: bool = False,
        echo_auth: bool = False,
        seed: int = 0,
        reply_as: Callable[[str], dict[str, Any]] | None = None,
        max_segments: int | None = None,
        context_error: Literal["openai", "vllm", "413"] = "openai",
    ) -> None:
        self.max_segments = max_segments
        self.context_error = context_error
        self.api_key = api_key
        self.reply_as = reply_as
        self.latency_s = latency_s
        self.dictionary = dict(DICTIONARY if dictionary is None else dictionary)
        self.hang_s = hang_s
        self.reject_json_mode = reject_json_mode
        self.echo_auth = echo_auth
        self._rng = random.Random(seed)
        self.faults: list[Fault] = []
        self.stats = Stats()
        self.log: list[dict[str, Any]] = []
        """One entry per request: body (the parsed JSON) and status."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: LoopbackHTTPServer | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> "ChatServer":
        self._httpd = LoopbackHTTPServer(_handler_for(self))
        self._httpd.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd:
            self._httpd.stop()

    def __enter__(self) -> "ChatServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.origin + "/v1"

    def add_fault(
        self, kind: FaultKind, match: str | None = None, times: int | None = 1, retry_after: str = "1",
        probability: float | None = None,
    ) -> Fault:
        fault = Fault(kind, match, times, retry_after, probability)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until no request is being handled (e.g. those a killed client left behind)."""
        deadline = time.monotonic() + timeout
        while self.stats.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.stats.active, f"{self.stats.active} requests still being handled after {timeout}s"

    # request handling ----------------------------------------------------------------------
    def handle(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.stats.requests += 1
            self.stats.active += 1
            self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        try:
            status, out_headers, body = self._handle(headers, raw)
            if self.echo_auth and status >= 400:
                body = _with_auth_echo(body, headers.get("authorization", ""))
            return status, out_headers, body
        finally:
            with self._lock:
                self.stats.active -= 1

    def _handle(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if headers.get("authorization") != f"Bearer {self.api_key}":
            received = headers.get("authorization", "").removeprefix("Bearer ")
            return self._error(401, f"Incorrect API key provided: {received}", "invalid_api_key")
        try:
            body = json.loads(raw)
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return self._error(400, "body is not a chat completion request", "invalid_request_error")
        user = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
        with self._lock:
            self.log.append({"body": body})
        if self.reject_json_mode and "response_format" in body:
            return self._error(400, "response_format is not supported by this model", "invalid_request_error")
        if self.max_segments is not None and _count_segments(user) > self.max_segments:
            return self._over_context(_count_segments(user))
        fault = self._take_fault(user, segment_level=False)
        if fault is not None and fault.kind == "rate_limit":
            return self._error(429, "Rate limit reached, try again later", "rate_limit_exceeded",
                               {"Retry-After": fault.retry_after})
        if fault is not None and fault.kind == "server_error":
            return self._error(500, "The server had an error while processing your request", "server_error")
        if fault is not None and fault.kind == "hang":
            self._stopping.wait(self.hang_s)
            return self._error(504, "gave up waiting", "timeout")
        if fault is not None and fault.kind == "disconnect":
            return DISCONNECT, {}, b""
        if self.latency_s:
            time.sleep(self.latency_s)
        content, n_segments = self._translate_user(user)
        if fault is not None and fault.kind == "malformed_json":
            content = content[: max(1, len(content) // 2)]
        if fault is not None and fault.kind == "wrong_length":
            content = _drop_last_item(content)
        return self._completion(body, messages, content, n_segments)

    def _translate_user(self, user: str) -> tuple[str, int]:
        try:
            items = json.loads(user)
        except ValueError:
            items = None
        if not isinstance(items, list):
            return self._translate_segment(user), 0
        translated = [self._translate_item(item) for item in items]
        n = sum(len(i) if isinstance(i, list) else 1 for i in items)
        return json.dumps({"t": translated}, ensure_ascii=False, separators=(",", ":")), n

    def _translate_item(self, item: Any) -> Any:
        if isinstance(item, list):
            return [self._translate_item(x) for x in item]
        return self._translate_segment(str(item))

    def _translate_segment(self, text: str) -> str:
        fault = self._take_fault(text, segment_level=True)
        if fault is not None and fault.kind == "english_echo":
            return text
        if fault is not None and fault.kind == "refusal":
            return REFUSAL
        out = dictionary_translate(text, self.dictionary)
        if fault is not None and fault.kind == "drop_mask":
            out = _MASK_RE.sub("", out, count=1)
        return out

    def _take_fault(self, text: str, segment_level: bool) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if (fault.kind in SEGMENT_FAULTS) == segment_level and fault.applies(text, self._rng):
                    fault.fired += 1
                    self.stats.faults[fault.kind] = self.stats.faults.get(fault.kind, 0) + 1
                    return fault
        return None

    def _completion(self, body: dict, messages: list[dict], content: str, n_segments: int) -> tuple[int, dict, bytes]:
        prompt = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        message = {"role": "assistant", "content": content, **(self.reply_as(content) if self.reply_as else {})}
        completion = count_tokens("".join(v for k, v in message.items() if k != "role" and isinstance(v, str)))
        with self._lock:
            self.stats.ok += 1
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion
            self.stats.segments += n_segments
            self.stats.statuses[200] = self.stats.statuses.get(200, 0) + 1
        reply = {
            "id": f"chatcmpl-{self.stats.requests}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "test-model"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
        return 200, {}, json.dumps(reply, ensure_ascii=False).encode("utf-8")

    def _over_context(self, n: int) -> tuple[int, dict, bytes]:
        if self.context_error == "413":
            return self._error(413, "Request Entity Too Large", "request_too_large")
        if self.context_error == "vllm":
            return self._error(400, f"This model's maximum context length is 64 tokens. However, you requested "
                                    f"{n * 40} tokens in the messages.", "BadRequestError")
        return self._error(400, f"This model's maximum context length is 64 tokens. However, your messages "
                                f"resulted in {n * 40} tokens.", "context_length_exceeded")

    def _error(
        self, status: int, message: str, code: str, headers: dict[str, str] | None = None
    ) -> tuple[int, dict, bytes]:
        with self._lock:
            self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        body = {"error": {"message": message, "type": code, "code": code, "param": None}}
        return status, headers or {}, json.dumps(body).encode("utf-8")


DISCONNECT = 0
"""Status `handle` returns for "close the connection without answering"."""


def _with_auth_echo(body: bytes, authorization: str) -> bytes:
    """The error body with the request's Authorization header repeated in its message and a field."""
    data = json.loads(body)
    error = data.setdefault("error", {})
    error["message"] = f"{error.get('message', '')} (request had Authorization: {authorization})"
    error["request_headers"] = {"authorization": authorization}
    return json.dumps(data).encode("utf-8")


def _count_segments(user: str) -> int:
    """Strings in a batch request (1 for a plain-text one)."""
    try:
        items = json.loads(user)
    except ValueError:
        return 1
    if not isinstance(items, list):
        return 1
    return sum(len(i) if isinstance(i, list) else 1 for i in items)


def _drop_last_item(content: str) -> str:
    data = json.loads(content)
    items = data["t"]
    data["t"] = items[:-1] if len(items) > 1 else items + items
    return json.dumps(data, ensure_ascii=False)


def _handler_for(server: ChatServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle's algorithm and the
            # client's delayed ACK add ~40 ms to every response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("content-length", 0))
            raw = self.rfile.read(length)
            if not self.path.rstrip("/").endswith("/chat/completions"):
                status, headers, body = 404, {}, b'{"error": {"message": "not found"}}'
            else:
                status, headers, body = server.handle({k.lower(): v for k, v in self.headers.items()}, raw)
            if status == DISCONNECT:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout test); nothing to answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
