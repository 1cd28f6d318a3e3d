"""The `judge` suite's scorer: open-ended answers scored by an LLM judge, as LLaVA-Bench does.

The judge (any OpenAI-compatible model, through `llm.ChatClient`: limits, retries, a dead endpoint
stops the run, the key from the environment) sees an item's context (captions and boxes as text),
the question, the reference answer (answer 1) and ours (answer 2), and scores both 1..10. The
relative score of a category is mean(ours) / mean(reference) x 100.

The prompt is ours, in Chinese, versioned: `prompts/judge_<version>.md`, the system text, then a
line `<!-- user -->`, then the user message with `{context}`, `{question}`, `{reference}` and
`{answer}` in it. Its id in cache keys is the version plus a hash of the file, so an edited prompt
never meets verdicts given under the old one.

Cache first, as generation: a reply is looked up by (model, prompt id, "judge", hash of the question,
context and both answers, sampling settings); only a miss is sent, and each reply is stored the
moment it arrives, before it is read, so a rerun sends nothing. A reply is read strictly:
`{"scores": [int, int], "reason": str}` (a ```json fence and a `<think>` preamble tolerated), each
score 1..10; anything else is asked for once more with a stricter note (its own cache key), then
is the error `parse_failed`. A request that fails after the client's retries is the error its
reason names (`http_500`, `timeout`, `too_long`...), not cached: the next run asks again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evaluators.config import JudgeConfig
from llm.cache import CacheKey, ResponseCache
from llm.cached import cache_first
from llm.client import ChatClient
from llm.errors import RequestFailed
from llm.estimate import Estimate, prompt_tokens
from llm.together import all_in_order
from llm.usage import RequestLedger, Usage

SHIPPED = Path(__file__).parent / "prompts"
KIND = "judge"
"""The `kind` of the judge's replies in the response cache."""
USER_MARK = "<!-- user -->"
"""The line of a prompt file between the system text and the user message template."""
FIELDS = ("context", "question", "reference", "answer")
_PLACEHOLDER = re.compile(r"\{(context|question|reference|answer)\}")
STRICT_NOTE = ("注意：你上一次的回复不符合要求（{reason}）。这一次只输出一个 JSON 对象，不要输出任何别的文字，格式为："
               '{{"scores": [答案一的分数, 答案二的分数], "reason": "打分理由"}}，两个分数都是 1 到 10 之间的整数。')
EXPECTED_REPLY_TOKENS = 96
"""A verdict's length in tokens (two scores and a sentence or two): for the TPM budget and estimates."""
MIN_SCORE, MAX_SCORE = 1, 10

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)
_THINK = re.compile(r"^\s*<think>.*?</think>\s*", re.S)


class JudgePromptError(ValueError):
    """A prompt file that is missing or lacks a part; names the file."""


class VerdictError(ValueError):
    """A judge's reply that is not a verdict; `detail` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"parse_failed: {detail}")
        self.reason, self.detail = "parse_failed", detail


@dataclass(frozen=True, slots=True)
class JudgePrompt:
    version: str
    prompt_id: str
    system: str
    user_template: str

    def messages(self, item: "JudgeItem", strict_reason: str | None = None) -> list[dict[str, str]]:
        values = {"context": item.context, "question": item.question, "reference": item.reference,
                  "answer": item.answer}
        user = _PLACEHOLDER.sub(lambda m: values[m.group(1)], self.user_template)  # one pass: answers may hold braces
        if strict_reason:
            user += "\n\n" + STRICT_NOTE.format(reason=strict_reason)
        return [{"role": "system", "content": self.system}, {"role": "user", "content": user}]


def prompt_id(version: str, text: str) -> str:
    """`<version>-<12 hex of sha256(file content)>`: what cache keys carry."""
    return f"{version}-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def load_judge_prompt(version: str = "v1", folder: Path = SHIPPED) -> JudgePrompt:
    path = folder / f"judge_{version}.md"
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        known = sorted(p.stem.removeprefix("judge_") for p in folder.glob("judge_*.md"))
        raise JudgePromptError(f"judge.prompt_version: no prompt file {path} (shipped versions: {known})") from None
    system, mark, user = text.partition(f"\n{USER_MARK}\n")
    if not mark:
        raise JudgePromptError(f"{path}: no line {USER_MARK!r} between the system text and the user message")
    missing = [f for f in FIELDS if "{" + f + "}" not in user]
    if missing or not system.strip():
        raise JudgePromptError(f"{path}: the user message must hold {{context}}, {{question}}, {{reference}} and "
                               f"{{answer}} (missing: {missing}) after a non-empty system text")
    return JudgePrompt(version, prompt_id(version, text), system.strip(), user.strip())


@dataclass(frozen=True, slots=True)
class JudgeItem:
    id: str
    category: str
    question: str
    context: str
    """What the judge knows of the image: captions and boxes, as text."""
    reference: str
    answer: str
    """Ours: the answer of the model under evaluation."""

    def content_hash(self) -> str:
        blob = json.dumps([self.question, self.context, self.reference, self.answer], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(slots=True)
class JudgeVerdict:
    item_id: str
    category: str
    reference_score: int | None
    answer_score: int | None
    reason: str
    """The judge's explanation (empty on an error)."""
    cached: bool
    """Every reply it took came from the cache: nothing was sent for this item."""
    error: str | None = None
    """None, `parse_failed`, `cache_miss` (no client) or the failed request's reason (`http_500`...)."""
    detail: str = ""
    requests: int = 0
    usage: Usage = field(default_factory=Usage)


class JudgeLedger(RequestLedger):
    """The client's counts plus the judge's: cache hits and strict retries, reported even when zero."""

    def __init__(self, config: JudgeConfig) -> None:
        super().__init__(prices=config.price.prices())

    def always_reported(self) -> tuple[str, ...]:
        return ("requests", "retries", "cache_hits", "strict_retries")


def parse_verdict(content: str | None) -> tuple[int, int, str]:
    """(reference score, answer score, reason) of a reply; raises VerdictError."""
    if content is None or not content.strip():
        raise VerdictError("empty reply")
    text = _THINK.sub("", content.strip())
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VerdictError(f"not a JSON object ({e.msg} at char {e.pos}): {text[:120]!r}") from None
    if not isinstance(data, dict):
        raise VerdictError(f"a JSON {type(data).__name__}, not an object")
    scores = data.get("scores")
    if not isinstance(scores, list) or len(scores) != 2:
        raise VerdictError('expected {"scores": [answer 1, answer 2], "reason": "..."}')
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, int):
            raise VerdictError(f"score {s!r} is not an integer")
        if not MIN_SCORE <= s <= MAX_SCORE:
            raise VerdictError(f"score {s} is outside {MIN_SCORE}..{MAX_SCORE}")
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise VerdictError("reason is not a string")
    return scores[0], scores[1], reason.strip()


class Judge:
    def __init__(self, config: JudgeConfig, cache: ResponseCache, client: ChatClient | None,
                 ledger: RequestLedger, prompt: JudgePrompt | None = None) -> None:
        self.config, self.cache, self.client, self.ledger = config, cache, client, ledger
        self.prompt = prompt or load_judge_prompt(config.prompt_version)

    def key(self, item: JudgeItem, strict_reason: str | None) -> CacheKey:
        return CacheKey(self.config.model, self.prompt.prompt_id, KIND, item.content_hash(),
                        self.sampling(strict_reason))

    def sampling(self, strict_reason: str | None) -> dict[str, Any]:
        """What besides the prompt and the item decides a reply: part of its cache key."""
        return {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens,
                "strict": strict_reason is not None}

    async def score(self, item: JudgeItem) -> JudgeVerdict:
        """The verdict on `item`; raises only `EndpointError` (the run cannot go on)."""
        first = await self._attempt(item, None)
        if first.error != "parse_failed":
            return first
        self.ledger.count("strict_retries")
        second = await self._attempt(item, first.detail[:160])
        second.requests += first.requests
        second.usage.add(first.usage)
        second.cached = second.cached and first.cached
        return second

    async def _attempt(self, item: JudgeItem, strict_reason: str | None) -> JudgeVerdict:
        out = JudgeVerdict(item.id, item.category, None, None, "", cached=False)
        key = self.key(item, strict_reason)
        try:
            got = await cache_first(self.cache, key, self.client, lambda: self.prompt.messages(item, strict_reason),
                                    min(EXPECTED_REPLY_TOKENS, self.config.max_tokens), self.ledger,
                                    max_tokens=self.config.max_tokens)
        except RequestFailed as e:
            out.error, out.detail, out.requests = e.reason, e.detail, 1
            return out
        if got.content is None:
            out.error, out.detail = "cache_miss", "no cached verdict for this item (no judge endpoint)"
            return out
        out.cached, out.usage, out.requests = got.cached, got.usage, got.requests
        try:
            out.reference_score, out.answer_score, out.reason = parse_verdict(got.content)
        except VerdictError as e:
            out.error, out.detail = e.reason, e.detail
        return out

    def estimate(self, items: Iterable[JudgeItem], estimate: Estimate) -> None:
        """Add `items` to `estimate` without sending: cache hits, or the request each would send."""
        for item in items:
            estimate.items += 1
            if self.cache.get(self.key(item, None)) is not None:
                estimate.cache_hits += 1
                continue
            messages = self.prompt.messages(item)
            estimate.add(prompt_tokens(messages), min(EXPECTED_REPLY_TOKENS, self.config.max_tokens),
                         prompt_tokens(messages[:1]))


async def judge_all(judge: Judge, items: list[JudgeItem]) -> list[JudgeVerdict]:
    """Every item at once (the client's limits decide how many are in flight), in item order. An
    `EndpointError` cancels the rest and is raised as itself."""
    return await all_in_order(judge.score(item) for item in items)


def relative_scores(verdicts: Iterable[JudgeVerdict]) -> dict[str, Any]:
    """`{"categories": {category: stats}, "overall": stats}`, categories in order of appearance; stats
    are {"n", "errors", "reference_mean", "answer_mean", "relative"} where `relative` is answer_mean /
    reference_mean x 100 (LLaVA-Bench's relative score). Verdicts with an error count in `errors` only;
    with none scored the means and `relative` are None."""
    groups: dict[str, list[JudgeVerdict]] = {}
    all_verdicts: list[JudgeVerdict] = []
    for v in verdicts:
        groups.setdefault(v.category, []).append(v)
        all_verdicts.append(v)
    return {"categories": {c: _stats(vs) for c, vs in groups.items()}, "overall": _stats(all_verdicts)}


def _stats(verdicts: list[JudgeVerdict]) -> dict[str, Any]:
    scored = [v for v in verdicts if v.error is None and v.reference_score is not None and v.answer_score is not None]
    n = len(scored)
    ref = sum(v.reference_score for v in scored) / n if n else None  # type: ignore[misc]
    ans = sum(v.answer_score for v in scored) / n if n else None  # type: ignore[misc]
    relative = ans / ref * 100 if ref else None  # type: ignore[operator]
    return {"n": n, "errors": len(verdicts) - n, "reference_mean": ref, "answer_mean": ans, "relative": relative}
