"""Backend `openai`: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama,
DeepSeek, Qwen...) through the shared client layer (`llm.client.ChatClient`: limits, retries
honouring `Retry-After`, a dead endpoint stops the run, the key scrubbed from every message).

The memory is consulted first (base.py); what is missing is packed into requests of many
segments (batching.py). Segments failing QA get one more try with a stricter prompt; a request
over the endpoint's context length is split in halves. Results go into the memory as each batch
finishes, so a killed run loses only what was in flight.

`estimate_only=True` builds a translator that never sends (`vcla translate --estimate`): no client,
no API key needed; `estimate` packs and builds the same requests and counts their tokens.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

from llm.client import ChatClient
from llm.errors import EndpointError
from llm.estimate import Estimate, prompt_tokens, request_tokens, text_tokens
from llm.together import all_in_order
from translators.base import MemoryFirstTranslator, Missing
from translators.batching import Reply, ReplyError, SegmentOutcome, decode_reply, encode_units, pack, send_with_split
from translators.config import TranslatorConfig
from translators.memory import TranslationMemory
from translators.placeholders import restore
from translators.prompts import PROMPTS, system_prompt
from translators.protocol import SegmentResult, TranslatorError, Verdict
from translators.qa import glossary_terms_in

log = logging.getLogger(__name__)

_REPLY_REASONS = {"parse_failed", "count_mismatch"}


class OpenAITranslator(MemoryFirstTranslator):
    def __init__(
        self,
        config: TranslatorConfig,
        memory: TranslationMemory,
        *,
        client: Any | None = None,
        rng: random.Random | None = None,
        estimate_only: bool = False,
    ) -> None:
        super().__init__(config, memory)
        if config.prompt_version not in PROMPTS:
            raise TranslatorError(
                f"translator.prompt_version: {config.prompt_version!r} is not a known prompt (known: {sorted(PROMPTS)})"
            )
        self.client: ChatClient | None = None
        if estimate_only:
            return
        try:
            self.client = ChatClient(config, self.stats, client=client, rng=rng,
                                     kept="every translation received is kept in the translation memory")
        except EndpointError as e:
            raise TranslatorError(str(e)) from None

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _translate_missing(self, groups: list[list[Missing]]) -> dict[str, SegmentResult]:
        done = await all_in_order(self._run_batch(batch) for batch in self._batches(groups))
        return {key: result for results in done for key, result in results.items()}

    def _estimate_missing(self, groups: list[list[Missing]], estimate: Estimate) -> bool:
        """One request per batch, as `_translate_missing` packs them (first tries only: strict retries
        and splits depend on the replies). Its reply is counted as long as its source texts: a
        translation is about as long as its source (CJK output is about one token a character, English
        input about four bytes a token: the two come out close)."""
        for batch in self._batches(groups):
            units = _texts(batch)
            messages = self._messages(units, strict=False)
            output = text_tokens("".join(t for u in units for t in u))
            estimate.add(prompt_tokens(messages), output, prefix=prompt_tokens(messages[:1]))
        return True

    def _batches(self, groups: list[list[Missing]]) -> list[list[list[Missing]]]:
        """The groups packed into requests (batching.pack: segments and characters per request)."""
        sizes = [(len(g), sum(len(m.masked.text) for m in g)) for g in groups]
        return [[groups[i] for i in b] for b in pack(sizes, self.config.batch_segments, self.config.max_batch_chars)]

    async def _run_batch(self, groups: list[list[Missing]]) -> dict[str, SegmentResult]:
        outcomes = await send_with_split(self._send, _texts(groups))
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

    def _messages(self, units: Sequence[Sequence[str]], strict: bool) -> list[dict[str, str]]:
        """The request for `units`: the system prompt (with the glossary terms they use) and the units
        in the wire format (batching.encode_units)."""
        texts = [t for u in units for t in u]
        glossary = glossary_terms_in(texts, self.config.glossary)
        system = system_prompt(self.prompt_version, self.config.source_lang, self.config.target_lang, glossary, strict)
        return [{"role": "system", "content": system}, {"role": "user", "content": encode_units(units)}]

    async def _send(self, units: Sequence[Sequence[str]], strict: bool) -> Reply:
        assert self.client is not None, "an estimate_only translator never sends"
        messages = self._messages(units, strict)
        try:
            completion = await self.client.complete(messages, estimate=request_tokens(messages))
        except EndpointError as e:
            raise TranslatorError(str(e)) from None
        try:
            return Reply(decode_reply(completion.content, [len(u) for u in units], completion.usage,
                                      completion.reasoning), completion.usage)
        except ReplyError as e:
            self.stats.count("reply_errors")
            log.info("reply for %d segments not usable (%s); splitting", sum(map(len, units)), e.reason)
            raise


def _texts(groups: list[list[Missing]]) -> list[list[str]]:
    """What is sent for each group: its segments' masked texts."""
    return [[m.masked.text for m in g] for g in groups]


