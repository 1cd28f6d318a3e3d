"""The part every backend shares: nothing is translated twice.

For a batch of units, each segment is resolved in this order:
1. nothing to translate (only `<image>`, numbers, URLs, code...): the source is the result;
2. a duplicate of a segment earlier in the batch, or one that a concurrent `translate` call
   is translating right now: it shares that result (callers may overlap batches freely);
3. in the translation memory (or the same text with its `<image>` elsewhere) and passing QA
   for this use: the stored translation;
4. otherwise it is *missing* and goes to the backend (`_translate_missing`), grouped by the
   unit it first appeared in, so the turns of a new conversation travel together.

`estimate` resolves a batch the same way and, instead of sending, adds to an `llm.estimate.Estimate`
what the backend would send for the missing segments (`_estimate_missing`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llm.estimate import Estimate
from translators.config import TranslatorConfig
from translators.memory import MemoryEntry, TranslationMemory, normalise
from translators.placeholders import Masked, peel_edges, protect
from translators.protocol import Segment, SegmentKind, SegmentResult, TranslatorError, Unit, Usage, Verdict
from translators.qa import QARules, check
from translators.report import TranslatorReport


@dataclass(slots=True)
class Missing:
    """A unique segment the memory could not serve."""

    key: str
    segment: Segment
    masked: Masked


class MemoryFirstTranslator:
    def __init__(self, config: TranslatorConfig, memory: TranslationMemory) -> None:
        self.config = config
        self.memory = memory
        self.model = config.model
        self.prompt_version = config.prompt_version
        self.rules = QARules.from_config(config.qa, config.target_lang, config.glossary)
        self.stats = TranslatorReport(prices=config.price.prices())
        self._qa_cache: dict[tuple[str, str, str], Verdict] = {}
        self._inflight: dict[str, asyncio.Future[SegmentResult]] = {}
        self._planned: set[str] = set()
        """Keys an earlier `estimate` call counted as sent: a run would have them in the memory by now."""
        self._unsent = 0
        """Missing segments that `estimate` found and this backend would not send (memory backend)."""

    async def translate(self, units: Sequence[Unit]) -> list[list[SegmentResult]]:
        results = self._new_results(units)
        places, masked = self._index(units, results)
        borrowed = {key: self._inflight[key] for key in places if key in self._inflight}
        self.stats.count("duplicates", len(borrowed))
        own = {key: where for key, where in places.items() if key not in borrowed}
        missing = self._serve_from_memory(units, own, results)
        fresh = await self._translate_own(units, places, masked, missing)
        for key in missing:
            self._fill(units, places[key], fresh[key], results)
        for key, future in borrowed.items():
            ui, si = places[key][0]
            shared = _share(await _borrowed(future), units[ui][si], self._check)
            self._fill(units, places[key], shared, results, count_failure=False)
        return results  # type: ignore[return-value]

    def estimate(self, units: Sequence[Unit], estimate: Estimate) -> None:
        """Add to `estimate` what `translate(units)` would send, sending nothing: the same passthrough,
        dedup and memory lookup (a memory hit failing QA is a miss), then `_estimate_missing`.
        `estimate.items` counts units, `estimate.cache_hits` unique segments the memory serves (or
        an earlier `estimate` call counted as sent: a run would have stored them by then)."""
        results = self._new_results(units)
        places, masked = self._index(units, results)
        own = {key: where for key, where in places.items() if key not in self._planned}
        missing = self._serve_from_memory(units, own, results)
        estimate.items += len(units)
        estimate.cache_hits += len(places) - len(missing)
        groups = self._group_by_unit(units, places, masked, missing)
        if groups and self._estimate_missing(groups, estimate):
            self._planned.update(missing)

    def _new_results(self, units: Sequence[Unit]) -> list[list[Any]]:
        """A fresh batch: one empty result per segment; QA verdicts are remembered per batch."""
        self._qa_cache.clear()
        return [[None] * len(u) for u in units]

    def _index(
        self, units: Sequence[Unit], results: list[list[Any]]
    ) -> tuple[dict[str, list[tuple[int, int]]], dict[str, Masked]]:
        """Passthrough segments are filled in; the rest are grouped by memory key, first seen first."""
        places: dict[str, list[tuple[int, int]]] = {}
        masked: dict[str, Masked] = {}
        for ui, unit in enumerate(units):
            for si, seg in enumerate(unit):
                self.stats.count("segments")
                m = protect(seg.text)
                if not m.translatable:
                    self.stats.count("passthrough")
                    results[ui][si] = SegmentResult(seg.text, seg.text, Verdict.passed(), "passthrough")
                    continue
                key = normalise(seg.text)
                if key in places:
                    self.stats.count("duplicates")
                places.setdefault(key, []).append((ui, si))
                masked.setdefault(key, m)
        return places, masked

    async def _translate_own(
        self, units: Sequence[Unit], places: dict[str, list[tuple[int, int]]], masked: dict[str, Masked],
        missing: list[str],
    ) -> dict[str, SegmentResult]:
        """Translate `missing`, announcing each key as in flight until its result is known."""
        loop = asyncio.get_running_loop()
        futures = {key: loop.create_future() for key in missing}
        self._inflight.update(futures)
        fresh: dict[str, SegmentResult] = {}
        try:
            groups = self._group_by_unit(units, places, masked, missing)
            fresh = await self._translate_missing(groups) if groups else {}
        finally:
            for key, future in futures.items():
                del self._inflight[key]
                if key in fresh:
                    future.set_result(fresh[key])
                else:
                    future.cancel()
        return fresh

    def _serve_from_memory(
        self, units: Sequence[Unit], places: dict[str, list[tuple[int, int]]], results: list[list[Any]]
    ) -> list[str]:
        """Fill memory hits in; return the keys that are still missing, in first-seen order."""
        hits = self.memory.lookup_many(places, self.config.target_lang, self.model, self.prompt_version)
        missing = []
        for key, where in places.items():
            entry = hits.get(key)
            if entry is None:
                self.stats.count("memory_misses")
                missing.append(key)
                continue
            targets = [_target_for(entry, units[ui][si].text) for ui, si in where]
            verdicts = [self._check(units[ui][si].text, t, units[ui][si].kind) for (ui, si), t in zip(where, targets)]
            if not all(v.ok for v in verdicts):
                self.stats.count("memory_hits_failed_qa")
                self.stats.count("memory_misses")
                missing.append(key)
                continue
            self.stats.count("memory_hits")
            if entry.match == "core":
                self.stats.count("memory_core_hits")
            for (ui, si), target, v in zip(where, targets, verdicts):
                results[ui][si] = SegmentResult(units[ui][si].text, target, v, "memory")
        return missing

    @staticmethod
    def _group_by_unit(
        units: Sequence[Unit], places: dict[str, list[tuple[int, int]]], masked: dict[str, Masked], missing: list[str]
    ) -> list[list[Missing]]:
        by_unit: dict[int, list[tuple[int, Missing]]] = {}
        for key in missing:
            ui, si = places[key][0]
            by_unit.setdefault(ui, []).append((si, Missing(key, units[ui][si], masked[key])))
        return [[m for _, m in sorted(group, key=lambda x: x[0])] for _, group in sorted(by_unit.items())]

    def _fill(
        self, units: Sequence[Unit], where: list[tuple[int, int]], first: SegmentResult, results: list[list[Any]],
        count_failure: bool = True,
    ) -> None:
        """The first occurrence gets `first` (usage included); repeats share the text, are
        checked for their own use (a repeat may be a short answer) and carry no usage."""
        if count_failure and not first.ok:
            self.stats.failed[first.verdict.reason or "failed"] += 1
        (ui0, si0), rest = where[0], where[1:]
        results[ui0][si0] = first
        for ui, si in rest:
            seg = units[ui][si]
            verdict = self._check(seg.text, first.text, seg.kind) if first.text is not None else first.verdict
            results[ui][si] = SegmentResult(seg.text, first.text, verdict, first.origin, Usage(), 0)

    def _check(self, source: str, translation: str, kind: SegmentKind) -> Verdict:
        """`qa.check`, remembered for this batch: repeats of a segment are checked once."""
        key = (source, translation, kind)
        if key not in self._qa_cache:
            self._qa_cache[key] = check(source, translation, self.rules, kind)
        return self._qa_cache[key]

    async def _translate_missing(self, groups: list[list[Missing]]) -> dict[str, SegmentResult]:
        """Translate every missing segment; one result per key. Backends override this."""
        raise NotImplementedError

    def _estimate_missing(self, groups: list[list[Missing]], estimate: Estimate) -> bool:
        """Add the requests that would translate `groups` to `estimate`; True when they would be sent
        (and so be in the memory for later batches). Backends that send override this; by default
        (the memory backend) nothing is sent and the misses would be rejected: one note, kept up
        to date, says how many."""
        self._unsent += sum(len(g) for g in groups)
        prefix = f"backend {self.config.backend}:"
        estimate.notes[:] = [n for n in estimate.notes if not n.startswith(prefix)]
        estimate.notes.append(f"{prefix} {self._unsent:,} segments missing from the memory would be rejected, "
                              "nothing is sent")
        return False

    def report(self) -> dict[str, Any]:
        return self.stats.to_dict()

    async def aclose(self) -> None:
        return None


def _target_for(entry: MemoryEntry, source: str) -> str:
    """An exact match as stored; a core match wrapped in this segment's edge placeholders."""
    if entry.match == "exact":
        return entry.target
    prefix, _, suffix = peel_edges(source)
    return prefix + entry.core_target + suffix


async def _borrowed(future: asyncio.Future[SegmentResult]) -> SegmentResult:
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if future.cancelled() and not (task and task.cancelling()):
            raise TranslatorError("a concurrent batch that was translating the same segment failed") from None
        raise


def _share(result: SegmentResult, segment: Segment, check: Any) -> SegmentResult:
    """Another call's result, for this call's first occurrence: its own QA, no usage."""
    verdict = check(segment.text, result.text, segment.kind) if result.text is not None else result.verdict
    return SegmentResult(segment.text, result.text, verdict, result.origin, Usage(), 0)
