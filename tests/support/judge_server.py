"""A loopback OpenAI-compatible server (`POST /v1/chat/completions`) that JUDGES answers, for the
`judge` suite's tests.

It reads the judge prompt's user message (`evaluators/prompts/judge_v1.md`): the text between
`[答案一开始]` / `[答案一结束]` is the reference, that between `[答案二开始]` / `[答案二结束]` ours. The
verdict is deterministic: the reference always gets `REFERENCE_SCORE` (8), ours `score_answer`:
10 x the Jaccard similarity of the two answers' character sets (whitespace left out), rounded and
clamped to 1..10. The reply is `{"scores": [ref, ours], "reason": "..."}` with usage counted as
`support.chat_server.count_tokens` does.

Faults are added with `add_fault` and fire `times` times (None: always) on requests whose user
message contains `match` (None: any) and that are (`on_strict=True`) or are not (`False`) a strict
retry (the user message holds `STRICT_MARK`); the first that applies fires, one per request:
- `rate_limit`: 429 with `Retry-After: <retry_after>`; `server_error`: 500
- content (200): `malformed` (prose, not JSON), `fenced` (the verdict inside a ```json fence),
  `out_of_range` (ours scored 11)
A request without `Authorization: Bearer <api_key>` gets 401 with the key it sent quoted (as OpenAI
does, partly); `echo_auth` makes every error body repeat the Authorization header, as a careless
proxy might.
"""

from __future__ import annotations

import json
import time
from typing import Literal

from support.chat_server import count_tokens
from support.gen_server import Fault, GenServer, Request, _error

JudgeFault = Literal["rate_limit", "server_error", "malformed", "fenced", "out_of_range"]
JUDGE_FAULTS: frozenset[str] = frozenset(JudgeFault.__args__)  # type: ignore[attr-defined]
REFERENCE_START, REFERENCE_END = "[答案一开始]", "[答案一结束]"
ANSWER_START, ANSWER_END = "[答案二开始]", "[答案二结束]"
STRICT_MARK = "注意：你上一次的回复不符合要求"
"""The start of the judge's strict retry note (evaluators.judge.STRICT_NOTE)."""
REFERENCE_SCORE = 8
MALFORMED = "我认为答案二比答案一略差一些，所以答案一给 8 分，答案二给 6 分。"


def score_answer(reference: str, answer: str) -> int:
    """10 x Jaccard(character sets of the two, whitespace left out), rounded, clamped to 1..10."""
    a, b = set("".join(reference.split())), set("".join(answer.split()))
    jaccard = len(a & b) / len(a | b) if a | b else 0.0
    return max(1, min(10, round(10 * jaccard)))


def between(text: str, start: str, end: str) -> str | None:
    i = text.find(start)
    j = text.find(end, i + len(start)) if i >= 0 else -1
    return text[i + len(start):j].strip() if i >= 0 and j >= 0 else None


class JudgeServer(GenServer):
    """`GenServer`'s HTTP handling, key check, counts and fault bookkeeping; judging instead of generating."""

    def __init__(self, api_key: str = "sk-test-key", latency_s: float = 0.0, seed: int = 0,
                 echo_auth: bool = False) -> None:
        super().__init__(api_key=api_key, latency_s=latency_s, seed=seed, echo_auth=echo_auth)

    def add_fault(self, kind: JudgeFault, times: int | None = None, match: str | None = None,  # type: ignore[override]
                  retry_after: str | float = "1", on_strict: bool | None = None) -> Fault:
        if kind not in JUDGE_FAULTS:
            raise ValueError(f"unknown fault {kind!r} (one of {sorted(JUDGE_FAULTS)})")
        fault = Fault(kind, times, None, match, str(retry_after), on_strict)  # type: ignore[arg-type]
        with self._lock:
            self.faults.append(fault)
        return fault

    def _answer(self, req: Request, body: dict, messages: list[dict]) -> tuple[int, dict[str, str], bytes]:
        text = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        req.body, req.messages, req.text, req.strict = body, messages, text, STRICT_MARK in text
        with self._lock:
            self.stats.strict_requests += req.strict
        fault = self._take_fault(req)
        req.fault = fault.kind if fault else None
        if fault is not None and fault.kind == "rate_limit":
            return _error(429, "Rate limit reached, try again later", "rate_limit_exceeded",
                          {"Retry-After": fault.retry_after})
        if fault is not None and fault.kind == "server_error":
            return _error(500, "The server had an error while processing your request", "server_error")
        reference, answer = between(text, REFERENCE_START, REFERENCE_END), between(text, ANSWER_START, ANSWER_END)
        if reference is None or answer is None:
            return _error(400, "the user message holds no two answers to judge", "invalid_request_error")
        if self.latency_s:
            time.sleep(self.latency_s)
        ours = score_answer(reference, answer)
        verdict = {"scores": [REFERENCE_SCORE, 11 if req.fault == "out_of_range" else ours],
                   "reason": f"答案二与参考答案的字符重合度给出 {ours} 分。"}
        content = json.dumps(verdict, ensure_ascii=False)
        if req.fault == "malformed":
            content = MALFORMED
        elif req.fault == "fenced":
            content = f"```json\n{content}\n```"
        req.reply = content
        return self._judged(body, messages, content)

    def _judged(self, body: dict, messages: list[dict], content: str) -> tuple[int, dict, bytes]:
        """The verdict as a chat completion; usage counted as `support.chat_server.count_tokens` does."""
        prompt = sum(count_tokens(str(m.get("content", ""))) for m in messages)
        completion = count_tokens(content)
        with self._lock:
            self.stats.ok += 1
            self.stats.prompt_tokens += prompt
            self.stats.completion_tokens += completion
            number = self.stats.ok
        reply = {
            "id": f"chatcmpl-judge-{number}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "test-judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }
        return 200, {}, json.dumps(reply, ensure_ascii=False).encode("utf-8")
