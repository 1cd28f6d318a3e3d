"""A loopback OpenAI-compatible server (`POST /v1/chat/completions`) that GENERATES instruction data,
for the generator's tests and benchmark.

It answers like a good model: the kind comes from the system message's format line
(`{"conversation": [` / `{"description":` / `{"question":`), the image from the LAST user message
(a string, or a list of `text` and `image_url` parts) in the format of `Context.text()`: the
"物体与位置" section's `name: [x1, y1, x2, y2]` lines. The reply is a deterministic JSON object
built from the object names (a small en -> zh dictionary, "物体" for the rest), their counts and
where their box centres lie (left / middle / right, top / bottom): a conversation of 2-4
question-answer pairs with distinct questions, a detail paragraph of 60-200 characters, or one
reasoning question and answer. It names no object the context lacks, quotes no number and no
word of the annotations, so every reply passes `generators.checks.check_record`. When the system
message carries the English override note the reply is in English.

Tokens are counted as `support.chat_server.count_tokens` does (`ceil(utf8_bytes / 4)`);
`prompt_tokens` is the sum over all messages (text parts, plus `IMAGE_TOKENS` per image part),
`completion_tokens` that of the reply, and `prompt_tokens_details.cached_tokens` simulates a
provider's automatic prefix caching: the tokens of every message but the last when a request with
the same such prefix was answered before, else 0.

Faults are injected with `add_fault` and fire `times` times (None: always) on requests whose last
user message contains `match` (None: any), of kind `only_kind` (None: any), that are (`on_strict=
True`) or are not (`False`) a strict retry (the last user message holds `STRICT_MARK`), with
`probability` on that share of them (the server's seeded RNG: a run is repeatable). The first
fault in the order added that applies fires; each request fires at most one.
- HTTP: `rate_limit` (429 + `Retry-After: <retry_after>`, e.g. "0.05"), `server_error` (500),
  `hang` (no answer for `hang_s`, or until the server stops; then 504), `disconnect` (the
  connection closed without an answer), `context_length` (400 `context_length_exceeded`, as OpenAI
  answers a request over the model's context length)
- content (200): `truncated_json` (the reply JSON cut in half), `wrong_shape` (`{"text": ...}`),
  `english` (the reply in English), `refusal` ("抱歉，作为一个AI，我无法完成这个任务。" as the
  answer), `bounding_box` (an answer speaking of the "边界框" / "bounding box" and quoting raw box
  numbers), `hallucinate` (an answer also names an object the context lacks: a dog, or a cat
  when there is a dog)
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from support.chat_server import count_tokens
from support.loopback import LoopbackHTTPServer

FaultKind = Literal[
    "rate_limit", "server_error", "hang", "disconnect", "context_length", "truncated_json", "wrong_shape",
    "english", "refusal", "bounding_box", "hallucinate",
]
FAULT_KINDS: frozenset[str] = frozenset(FaultKind.__args__)  # type: ignore[attr-defined]
STRICT_MARK = "注意：你上一次的回复没有通过检查"
"""The start of the generator's strict retry note (generators.prompt_set.STRICT_NOTE)."""
ENGLISH_MARK = "Language override: write every question, answer and description in English"
REFUSAL_ZH = "抱歉，作为一个AI，我无法完成这个任务。"
REFUSAL_EN = "I'm sorry, as an AI I cannot complete this task."
IMAGE_TOKENS = 85
"""Prompt tokens counted per image part (OpenAI's low-detail price)."""
OBJECTS_HEADER = "物体与位置"

NAMES_ZH = {
    "person": "人", "bicycle": "自行车", "car": "汽车", "motorcycle": "摩托车", "bus": "公交车", "truck": "卡车",
    "traffic light": "红绿灯", "bench": "长椅", "bird": "鸟", "cat": "猫", "dog": "狗", "horse": "马",
    "umbrella": "雨伞", "backpack": "背包", "bottle": "瓶子", "cup": "杯子", "bowl": "碗", "knife": "刀",
    "banana": "香蕉", "apple": "苹果", "orange": "橙子", "pizza": "披萨", "cake": "蛋糕", "chair": "椅子",
    "couch": "沙发", "potted plant": "盆栽", "bed": "床", "dining table": "餐桌", "tv": "电视",
    "laptop": "笔记本电脑", "book": "书", "clock": "时钟", "vase": "花瓶", "kite": "风筝",
}
"""A small dictionary; any other name is "物体" in a Chinese reply (never the English word)."""
_NUM_ZH = ["零", "一", "两", "三", "四", "五", "六", "七", "八", "九", "十"]


# the model's side ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Seen:
    """One object of the context: its name and box centre."""

    name: str
    cx: float
    cy: float


def request_kind(system: str) -> str | None:
    """conversation | detail | reasoning, from the format line of the system message."""
    if '{"conversation": [' in system:
        return "conversation"
    if '{"description":' in system:
        return "detail"
    if '{"question":' in system:
        return "reasoning"
    return None


def split_content(content: Any) -> tuple[str, list[str]]:
    """(text, image URLs) of a message's content: a string or a list of parts."""
    if isinstance(content, str):
        return content, []
    text, urls = [], []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            text.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            urls.append(str(image.get("url", "") if isinstance(image, dict) else image))
    return "\n".join(text), urls


def parse_objects(text: str) -> list[Seen]:
    """The `name: [x1, y1, x2, y2]` lines of the objects section of a `Context.text()`."""
    out: list[Seen] = []
    in_objects = False
    for line in text.splitlines():
        if line.startswith(OBJECTS_HEADER):
            in_objects = True
            continue
        if not line.strip():
            in_objects = False
            continue
        if not in_objects or ": [" not in line:
            continue
        name, _, box = line.rpartition(": [")
        try:
            x1, y1, x2, y2 = (float(v) for v in box.rstrip("]").split(","))
        except ValueError:
            continue
        out.append(Seen(name.strip(), (x1 + x2) / 2, (y1 + y2) / 2))
    return out


def _zh_name(name: str) -> str:
    return NAMES_ZH.get(name.lower(), "物体")


def _zh_count(n: int) -> str:
    return _NUM_ZH[n] if n <= 10 else str(n)


def _where_zh(o: Seen) -> str:
    h = "左边" if o.cx < 0.4 else "右边" if o.cx > 0.6 else "中间"
    v = "上方" if o.cy < 0.4 else "下方" if o.cy > 0.6 else ""
    return f"{h}偏{v}" if v else h


def _where_en(o: Seen) -> str:
    h = "left" if o.cx < 0.4 else "right" if o.cx > 0.6 else "middle"
    v = "upper " if o.cy < 0.4 else "lower " if o.cy > 0.6 else ""
    return f"the {v}{h} of the picture"


def _groups(objects: list[Seen]) -> list[tuple[str, int, Seen]]:
    """(name, count, first object) per distinct name, most frequent first, then by name."""
    counts = Counter(o.name for o in objects)
    first = {}
    for o in objects:
        first.setdefault(o.name, o)
    return [(name, n, first[name]) for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def reply_zh(kind: str, objects: list[Seen]) -> dict[str, Any]:
    groups = _groups(objects)[:4]
    names = "、".join(dict.fromkeys(_zh_name(g[0]) for g in groups))
    if kind == "conversation":
        if not groups:
            return {"conversation": [
                {"question": "这张图片给你什么样的感觉？", "answer": "画面安静而自然，色调柔和，看起来很舒服。"},
                {"question": "画面的光线怎么样？", "answer": "光线比较均匀，整个画面明亮清楚。"}]}
        turns = [{"question": "图中能看到哪些东西？", "answer": f"画面里可以看到{names}。"}]
        name, n, o = groups[0]
        zh = _zh_name(name)
        turns.append({"question": f"图中有几个{zh}？", "answer": f"一共有{_zh_count(n)}个{zh}。"})
        turns.append({"question": f"{zh}在画面的什么位置？", "answer": f"{zh}位于画面的{_where_zh(o)}。"})
        if len(groups) > 1:
            other = _zh_name(groups[1][0])
            side = "左边" if o.cx <= groups[1][2].cx else "右边"
            turns.append({"question": f"{zh}和{other}谁更靠左？",
                          "answer": f"{zh}在{other}的{side}，两者都清楚可见。"})
        return {"conversation": turns}
    if kind == "detail":
        sentences = ["这是一张日常场景的照片。"]
        for name, n, o in groups:
            sentences.append(f"画面的{_where_zh(o)}有{_zh_count(n)}个{_zh_name(name)}。")
        sentences.append("整个画面构图简洁，光线柔和，显得安静而自然。")
        if len("".join(sentences)) < 60:
            sentences.append("各处的细节都很清楚，色彩也比较协调，看上去十分舒服。")
        return {"description": "".join(sentences)}
    if not groups:
        return {"question": "这张图片可能是在什么时候拍摄的？为什么？",
                "answer": "很可能是在白天拍摄的。画面明亮，光线均匀，没有灯光照明的痕迹，所以应该是白天。"}
    name, n, o = groups[0]
    zh = _zh_name(name)
    return {"question": f"画面中的{zh}为什么会出现在这里？",
            "answer": f"画面里能看到{names}。{zh}位于画面的{_where_zh(o)}，一共有{_zh_count(n)}个，"
                      f"和周围的景物放在一起显得很自然，说明这里是它平时所在的地方。"}


def reply_en(kind: str, objects: list[Seen]) -> dict[str, Any]:
    groups = _groups(objects)[:4]
    names = ", ".join(dict.fromkeys(g[0] for g in groups))
    if kind == "conversation":
        if not groups:
            return {"conversation": [
                {"question": "What is the mood of this picture?",
                 "answer": "It looks calm and quiet, with soft colours."},
                {"question": "How is the lighting?", "answer": "The light is even and the whole scene is bright."}]}
        name, n, o = groups[0]
        turns = [{"question": "What can be seen in the picture?", "answer": f"The picture shows {names}."},
                 {"question": f"How many {name} items are there?", "answer": f"There are {n} in total."},
                 {"question": f"Where is the {name}?", "answer": f"It is in {_where_en(o)}."}]
        return {"conversation": turns}
    if kind == "detail":
        parts = ["This is a photo of an everyday scene."]
        parts += [f"In {_where_en(o)} there are {n} {name} items." for name, n, o in groups]
        parts.append("The whole scene is simple, calm and evenly lit.")
        return {"description": " ".join(parts)}
    if not groups:
        return {"question": "When was this picture probably taken, and why?",
                "answer": "Probably during the day: the scene is bright and evenly lit without lamps."}
    name, n, o = groups[0]
    return {"question": f"Why is the {name} there?",
            "answer": f"The picture shows {names}. The {name} sits in {_where_en(o)}, which looks like its usual "
                      "place among the other things around it."}


def _first_answer_key(kind: str) -> tuple[str, ...]:
    return {"conversation": ("conversation", 0, "answer"), "detail": ("description",),
            "reasoning": ("answer",)}[kind]  # type: ignore[return-value]


def _edit_answer(reply: dict[str, Any], kind: str, edit: Any) -> dict[str, Any]:
    """`reply` with its first answer (the description for detail) replaced by `edit(old)`."""
    data = json.loads(json.dumps(reply))
    *path, last = _first_answer_key(kind)
    node: Any = data
    for k in path:
        node = node[k]
    node[last] = edit(node[last])
    return data


# the server ----------------------------------------------------------------------------------
@dataclass
class Fault:
    kind: FaultKind
    times: int | None = None
    probability: float | None = None
    match: str | None = None
    retry_after: str = "1"
    on_strict: bool | None = None
    only_kind: str | None = None
    fired: int = 0

    def applies(self, text: str, strict: bool, kind: str | None, rng: random.Random) -> bool:
        return ((self.times is None or self.fired < self.times) and (self.match is None or self.match in text)
                and (self.on_strict is None or self.on_strict == strict)
                and (self.only_kind is None or self.only_kind == kind)
                and (self.probability is None or rng.random() < self.probability))


@dataclass
class Stats:
    requests: int = 0
    ok: int = 0
    statuses: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    """Requests by generation kind (conversation / detail / reasoning / unknown)."""
    strict_requests: int = 0
    """Requests whose last user message carries the strict retry note."""
    english_requests: int = 0
    """Requests whose system message carries the English override note."""
    image_parts: int = 0
    """image_url parts received (in the last user message)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    faults: Counter = field(default_factory=Counter)
    """Faults fired, by kind."""
    active: int = 0
    peak_active: int = 0


@dataclass
class Request:
    """What one request brought: kept in `GenServer.log`, in arrival order."""

    at: float
    """time.monotonic() on arrival."""
    auth_ok: bool
    messages: list[dict[str, Any]] = field(default_factory=list)
    body: dict[str, Any] = field(default_factory=dict)
    kind: str | None = None
    text: str = ""
    """The last user message's text."""
    image_urls: list[str] = field(default_factory=list)
    strict: bool = False
    english: bool = False
    fault: str | None = None
    status: int = 0
    reply: str | None = None
    """The content answered (200 only)."""
    cached_tokens: int = 0

    @property
    def has_image(self) -> bool:
        return bool(self.image_urls)


class GenServer:
    def __init__(
        self,
        api_key: str = "sk-test-key",
        latency_s: float = 0.0,
        hang_s: float = 30.0,
        seed: int = 0,
        echo_auth: bool = False,
    ) -> None:
        self.api_key = api_key
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.echo_auth = echo_auth
        self._rng = random.Random(seed)
        self.faults: list[Fault] = []
        self.stats = Stats()
        self.log: list[Request] = []
        self._prefixes: set[str] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: LoopbackHTTPServer | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> "GenServer":
        self._httpd = LoopbackHTTPServer(_handler_for(self))
        self._httpd.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd:
            self._httpd.stop()

    def __enter__(self) -> "GenServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start() the server first"
        return self._httpd.origin + "/v1"

    def add_fault(
        self, kind: FaultKind, times: int | None = None, probability: float | None = None, match: str | None = None,
        retry_after: str | float = "1", on_strict: bool | None = None, only_kind: str | None = None,
    ) -> Fault:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} (one of {sorted(FAULT_KINDS)})")
        fault = Fault(kind, times, probability, match, str(retry_after), on_strict, only_kind)
        with self._lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def reset_stats(self) -> None:
        """Forget the counts and the log (not the prefixes seen: a provider's cache outlives a run)."""
        with self._lock:
            self.stats = Stats()
            self.log.clear()

    def wait_idle(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.stats.active and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not self.stats.active, f"{self.stats.active} requests still being handled after {timeout}s"

    @property
    def answered(self) -> list[Request]:
        return [r for r in self.log if r.status == 200]

    # request handling ----------------------------------------------------------------------
    def handle(self, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        with self._lock:
            self.stats.requests += 1
            self.stats.active += 1
            self.stats.peak_active = max(self.stats.peak_active, self.stats.active)
        req = Request(time.monotonic(), headers.get("authorization") == f"Bearer {self.api_key}")
        with self._lock:
            self.log.append(req)
        try:
            status, out_headers, body = self._handle(req, headers, raw)
            if self.echo_auth and status >= 400:
                body = _with_auth_echo(body, headers.get("authorization", ""))
            req.status = status
            with self._lock:
                self.stats.statuses[status] += 1
            return status, out_headers, body
        finally:
            with self._lock:
                self.stats.active -= 1

    def _handle(self, req: Request, headers: dict[str, str], raw: bytes) -> tuple[int, dict[str, str], bytes]:
        """The API key, then the body as a chat completion request, then `_answer`."""
        if not req.auth_ok:
            received = headers.get("authorization", "").removeprefix("Bearer ")
            return _error(401, f"Incorrect API key provided: {received}", "invalid_api_key")
        try:
            body = json.loads(raw)
            messages = body["messages"]
            assert isinstance(messages, list)
        except (ValueError, KeyError, TypeError, AssertionError):
            return _error(400, "body is not a chat completion request", "invalid_request_error")
        return self._answer(req, body, messages)

    def _answer(self, req: Request, body: dict, messages: list[dict]) -> tuple[int, dict[str, str], bytes]:
        """A generation request: its kind, faults, then the reply a good generator would give."""
        system = next((str(m.get("content", "")) for m in messages if m.get("role") == "system"), "")
        last_user = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
        text, urls = split_content(last_user)
        req.body, req.messages, req.text, req.image_urls = body, messages, text, urls
        req.kind, req.strict, req.english = request_kind(system), STRICT_MARK in text, ENGLISH_MARK in system
        with self._lock:
            self.stats.kinds[req.kind or "unknown"] += 1
            self.stats.image_parts += len(urls)
            self.stats.strict_requests += req.strict
            self.stats.english_requests += req.english
        fault = self._take_fault(req)
        req.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "rate_limit":
            return _error(429, "Rate limit reached, try again later", "rate_limit_exceeded",
                          {"Retry-After": fault.retry_after})
        if fault is not None and fault.kind == "server_error":
            return _error(500, "The server had an error while processing your request", "server_error")
        if fault is not None and fault.kind == "hang":
            self._stopping.wait(self.hang_s)
            return _error(504, "gave up waiting", "timeout")
        if fault is not None and fault.kind == "disconnect":
            return DISCONNECT, {}, b""
        if fault is not None and fault.kind == "context_length":
            n = sum(_message_tokens(m) for m in messages)
            return _error(400, f"This model's maximum context length is 256 tokens. However, your messages resulted "
                               f"in {n} tokens.", "context_length_exceeded")
        if req.kind is None:
            return _error(400, "the system message names no reply format this model knows", "invalid_request_error")
        if self.latency_s:
            time.sleep(self.latency_s)
        content = self._content(req, fault.kind if fault else None)
        req.reply = content
        return self._completion(req, body, messages, content)

    def _content(self, req: Request, fault: str | None) -> str:
        kind, objects = req.kind or "conversation", parse_objects(req.text)
        english = req.english or fault == "english"
        reply = reply_en(kind, objects) if english else reply_zh(kind, objects)
        if fault == "wrong_shape":
            reply = {"text": json.dumps(reply, ensure_ascii=False)}
        elif fault == "refusal":
            reply = _edit_answer(reply, kind, lambda _: REFUSAL_EN if english else REFUSAL_ZH)
        elif fault == "bounding_box":
            extra = ("(its bounding box is [0.312, 0.455, 0.700, 0.912])" if english
                     else "（它的边界框是 [0.312, 0.455, 0.700, 0.912]）")
            reply = _edit_answer(reply, kind, lambda a: a + extra)
        elif fault == "hallucinate":
            names = {o.name.lower() for o in objects}
            en, zh = ("cat", "猫") if "dog" in names else ("dog", "狗")
            extra = f" A {en} lies nearby." if english else f"旁边还趴着一只{zh}。"
            reply = _edit_answer(reply, kind, lambda a: a + extra)
        content = json.dumps(reply, ensure_ascii=False)
        if fault == "truncated_json":
            content = content[: len(content) // 2]
        return content

    def _take_fault(self, req: Request) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.applies(req.text, req.strict, req.kind, self._rng):
                    fault.fired += 1
                    self.stats.faults[fault.kind] += 1
                    return fault
        return None

    def _completion(self, req: Request, body: dict, messages: list[dict], content: str) -> tuple[int, dict, bytes]:
        prompt = sum(_message_tokens(m) for m in messages)
        prefix_key = hashlib.sha256(json.dumps(messages[:-1], sort_keys=True, ensure_ascii=False).encode()).hexdigest()
        completion = count_tokens(content)
        with self._lock:
            cached = sum(_message_tokens(m) for m in messages[:-1]) if prefix_key in self._prefixes else 0
            self._prefixes.add(prefix_key)
            self.stats.ok += 1
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion
            self.stats.cached_tokens += cached
            number = self.stats.ok
        req.cached_tokens = cached
        reply = {
            "id": f"chatcmpl-gen-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "test-gen"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                      "prompt_tokens_details": {"cached_tokens": cached}},
        }
        return 200, {}, json.dumps(reply, ensure_ascii=False).encode("utf-8")


DISCONNECT = 0
"""Status `handle` returns for "close the connection without answering"."""


def _message_tokens(message: dict[str, Any]) -> int:
    text, urls = split_content(message.get("content", ""))
    return count_tokens(text) + IMAGE_TOKENS * len(urls)


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    body = {"error": {"message": message, "type": code, "code": code, "param": None}}
    return status, headers or {}, json.dumps(body).encode("utf-8")


def _with_auth_echo(body: bytes, authorization: str) -> bytes:
    data = json.loads(body)
    error = data.setdefault("error", {})
    error["message"] = f"{error.get('message', '')} (request had Authorization: {authorization})"
    error["request_headers"] = {"authorization": authorization}
    return json.dumps(data).encode("utf-8")


def _handler_for(server: GenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see chat_server

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
