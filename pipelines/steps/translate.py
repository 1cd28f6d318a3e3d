"""Step `translate`: every record not yet in the target language gets Chinese `messages`.

    stats = run_translate(recipe, run_dir / "download", run_dir / "translate")

Reads `in_dir/records/*.jsonl` (one `Record.to_dict()` per line) and writes
`out_dir/records/<same name>.jsonl` in the same order: translated records carry `messages`
in the target language, the original in `messages_en`, and `translation` (backend, model,
prompt version, one QA verdict per message); records already in the target language pass
through untouched. A record with any message that has no passing translation is a row in
`rejected/translate.jsonl` with the reason and which message failed.

Reruns: the translation memory (SQLite, outside this folder) keeps every translation as it
arrives, so a rerun re-reads everything but sends only what the memory lacks, and a kill -9
loses at most the requests in flight. A completed step is skipped unless it left records
that a retry could fix (failed QA, failed requests, memory misses): its `_SUCCESS` says how many
(`retry_pending`), the flows (pipelines/orchestration/flows.py) run such a step again, and only
those are sent.
`_SUCCESS` also holds `output_digest`, a hash of what the records files say (ids and messages,
not the per-run `translation` bookkeeping): a rerun that healed nothing leaves it unchanged, so
the steps downstream are not redone.

A translator that cannot run at all (a rejected key, an unknown model, an endpoint that is
unreachable or stops answering: translators/openai_backend.py) fails the step (`StepFailed`,
`vcla` exits 1) without `_SUCCESS`; what was translated stays in the memory for the next run.

`--estimate` (`estimate=True`) sends nothing and writes nothing under `out_dir`: the memory imports are
applied, the records read window by window as a run reads them, and for each window the translator
counts what it would send (translators/base.py `estimate`); it prints requests, tokens, memory hits,
cost at the recipe's prices and time at its rate limits (llm/estimate.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from common.retry import retryable_status, status_in
from common.files import atomic_open, clean_stale_temp_files, read_json, write_json
from common.layout import DONE_FILE
from common.progress import bar, count_lines
from llm.estimate import Estimate
from pipelines.core.completion import is_done, mark_done, step_storage_errors
from pipelines.core.errors import StepFailed
from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats
from pipelines.core.step import EstimateOptions, Step
from pipelines.recipe import Recipe
from templates.schema import Record
from translators.backends import build_translator
from translators.base import MemoryFirstTranslator
from translators.config import TranslatorConfig
from translators.memory import MemoryImportError, MemoryWriteError, TranslationMemory
from translators.protocol import Segment, SegmentKind, SegmentResult, TranslatorError

log = logging.getLogger(__name__)

STEP_NAME = "translate"
UNRETRYABLE = {"bad_record", "unsupported_lang"}
"""Rejections a rerun cannot fix; every other reason makes the next run try again."""
TRANSIENT = {"connection_error", "timeout", "parse_failed", "count_mismatch"}
"""Failures of the request or reply, with `http_<status>` for a status `common.retry` calls retryable:
the flows rerun the step until none is left. A 400, 413 or 422 for a segment (too long, a content
filter) comes back the same: capped like QA failures."""
MAX_QA_RERUNS = 2
"""QA failures (numbers_changed, refusal, ...) survived the stricter retry; a model at low temperature
mostly repeats them, so they keep the step pending for this many reruns in a row only, not for ever
(`qa_reruns`: the reruns since the step last had none; reruns for request failures alone do not count)."""
SHORT_ANSWER_WORDS = 3
WINDOWS_IN_FLIGHT = 2
_RECORD_FIELDS = tuple(f.name for f in fields(Record))


TranslateOptions = EstimateOptions


@dataclass(slots=True)
class _Item:
    location: str
    record: Record | None
    """None once rejected on read; kept for the output order."""


def run_translate(recipe: Recipe, in_dir: Path, out_dir: Path, estimate: bool = False) -> StepStats:
    """Translate a run's records (see the module docstring). Safe to call again at any time.
    `estimate`: send and write nothing; print (and return in `extra`, as `estimate_<key>`) what it would cost."""
    return asyncio.run(arun_translate(recipe, in_dir, out_dir, estimate))


async def arun_translate(recipe: Recipe, in_dir: Path, out_dir: Path, estimate: bool = False) -> StepStats:
    """`run_translate` for callers that already run an event loop. A full disk or a permission error
    (records, rejections or the translation memory) stops the step with a message naming the path;
    so does a translator that cannot run (`TranslatorError`: its message names the endpoint and the cause)."""
    with step_storage_errors(STEP_NAME, out_dir, MemoryWriteError, TranslatorError):
        return await _translate(recipe, Path(in_dir), Path(out_dir), estimate)


async def _translate(recipe: Recipe, in_dir: Path, out_dir: Path, estimate: bool = False) -> StepStats:
    cfg = recipe.translator
    previous = read_json(out_dir / DONE_FILE) if is_done(out_dir) else None
    if previous is not None and not previous.get("retry_pending", 0) and not estimate:
        stats = StepStats.from_dict(read_json(out_dir / "stats.json"))
        print(stats.table())
        return stats
    # old markers lack qa_failed: count the rerun
    had_qa = previous is not None and previous.get("qa_failed", 1) > 0
    qa_reruns = previous.get("qa_reruns", 0) + 1 if had_qa else 0
    files = sorted((in_dir / "records").glob("*.jsonl"))
    if not files:
        raise StepFailed(f"{STEP_NAME}: {in_dir / 'records'}: no *.jsonl record files; run `vcla download` and "
                         "`vcla generate` first (generate passes the records through when the recipe has no "
                         "`generate:` section)")
    recipe.require_files("translator.memory_import")
    if estimate:
        return await _estimate(recipe, files)
    clean_stale_temp_files(out_dir)
    (out_dir / DONE_FILE).unlink(missing_ok=True)
    stats = StepStats(STEP_NAME)
    digest = hashlib.sha256()
    planned = Estimate()
    with TranslationMemory(Path(recipe.translator.memory_path)) as memory:
        _import_memory_files(memory, cfg, stats)
        translator = build_translator(cfg, memory)
        planner = build_translator(cfg, memory, estimate_only=True)  # its own counters: the run's stay exact
        try:
            with RejectWriter(out_dir / "rejected", STEP_NAME, stats) as rejects:
                for path in files:
                    digest.update(path.name.encode() + b"\0")
                    await _translate_file(path, out_dir / "records" / path.name, translator, stats, rejects, digest,
                                          (planner, planned))
        finally:
            await translator.aclose()
            await planner.aclose()
        stats.extra.update(translator.report())
    # what --estimate would have said, beside what was sent and billed (the summary shows both)
    stats.extra.update({f"estimate_{k}": v for k, v in planned.to_dict(cfg).items()
                        if k in ("requests", "input_tokens", "output_tokens", "cost_usd")})
    pending = _retry_pending(stats.rejected, qa_reruns)
    write_json(out_dir / "stats.json", stats.to_dict())
    mark_done(out_dir, {"retry_pending": pending, "qa_reruns": qa_reruns, "qa_failed": _failures(stats.rejected)[1],
                        "backend": cfg.backend, "model": cfg.model, "output_digest": digest.hexdigest()})
    print(stats.table())
    return stats


async def _estimate(recipe: Recipe, files: list[Path]) -> StepStats:
    """What a run would send, window by window as `_translate_file` reads them; nothing is written
    but the memory imports (a run would use them too)."""
    cfg = recipe.translator
    stats = StepStats(STEP_NAME)
    est = Estimate()
    rejects = _CountedRejects(stats)
    with TranslationMemory(Path(cfg.memory_path)) as memory:
        _import_memory_files(memory, cfg, stats)
        translator = build_translator(cfg, memory, estimate_only=True)
        try:
            for path in files:
                for window in _windows(_read_records(path, stats, rejects), cfg.window_records):
                    _, units = _units(window, cfg, rejects)
                    translator.estimate(units, est)
        finally:
            await translator.aclose()
    print(est.table(cfg, f"[{STEP_NAME}] {stats.read:,} records"))
    stats.extra.update({f"estimate_{k}": v for k, v in est.to_dict(cfg).items() if v is not None})
    return stats


class _CountedRejects:
    """`RejectWriter` for an estimate: rejections are counted in the stats, nothing is written."""

    def __init__(self, stats: StepStats) -> None:
        self.stats = stats

    def reject(self, *, source: str, reason: str, **_: Any) -> None:
        self.stats.count_rejected(source, reason)


Rejects = RejectWriter | _CountedRejects


def _retry_pending(rejected: dict[str, int], qa_reruns: int) -> int:
    """Rejections the next run should retry: request failures always, QA failures for MAX_QA_RERUNS reruns."""
    transient, qa = _failures(rejected)
    return transient + (qa if qa_reruns < MAX_QA_RERUNS else 0)


def _failures(rejected: dict[str, int]) -> tuple[int, int]:
    """(request failures, the other retryable rejections: failed QA, a 4xx that will come back)."""
    transient = sum(n for reason, n in rejected.items() if _is_transient(reason))
    return transient, sum(n for reason, n in rejected.items() if reason not in UNRETRYABLE) - transient


def _is_transient(reason: str) -> bool:
    return reason in TRANSIENT or retryable_status(status_in(reason, "http_"))


def _import_memory_files(memory: TranslationMemory, cfg: TranslatorConfig, stats: StepStats) -> None:
    """Merge `translator.memory_import` (checked to exist); a file that is not in the exchange format
    fails the step naming the key, the file and line, and what to do (nothing of it is imported)."""
    for i, path in enumerate(cfg.memory_import):
        try:
            report = memory.import_jsonl(path)
        except MemoryImportError as e:
            raise StepFailed(f"{STEP_NAME}: translator.memory_import[{i}]: {e} (or remove the file from "
                              "translator.memory_import)") from None
        stats.extra["memory_imported_rows"] += report.rows
        what = "unchanged since last import" if report.skipped_file else f"{report.rows} rows"
        log.info("memory import %s: %s", path, what)


async def _translate_file(
    path: Path, out_path: Path, translator: MemoryFirstTranslator, stats: StepStats, rejects: RejectWriter,
    digest: Any, planned: tuple[MemoryFirstTranslator, Estimate] | None = None,
) -> None:
    """Windows of records are translated with up to `WINDOWS_IN_FLIGHT` at once, so the requests
    of one window's slow tail overlap the next; they are written in input order (and fed to `digest`)."""
    in_flight: deque[asyncio.Task[list[_Item]]] = deque()
    with atomic_open(out_path, "w", encoding="utf-8") as out, bar(count_lines(path), f"translate {path.stem}") as pb:
        try:
            for window in _windows(_read_records(path, stats, rejects), translator.config.window_records):
                in_flight.append(asyncio.create_task(_translate_window(window, translator, stats, rejects, planned)))
                if len(in_flight) >= WINDOWS_IN_FLIGHT:
                    pb.update(_write(await in_flight.popleft(), out, stats, digest))
            while in_flight:
                pb.update(_write(await in_flight.popleft(), out, stats, digest))
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            raise
    log.info("%s -> %s", path, out_path)


def _windows(items: Iterator[_Item], size: int) -> Iterator[list[_Item]]:
    window: list[_Item] = []
    for item in items:
        window.append(item)
        if len(window) >= size:
            yield window
            window = []
    if window:
        yield window


def _write(window: list[_Item], out: IO, stats: StepStats, digest: Any) -> int:
    """Write a translated window in input order; returns how many input records it covered.

    `digest` gets each kept record's id and messages: what this step decided. The rest of a row
    is its input (covered by the upstream fingerprint) or per-run bookkeeping (`translation`:
    tokens, memory or model), which must not make the steps downstream redo their work."""
    for it in window:
        if it.record is not None:
            out.write(json.dumps(_as_row(it.record), ensure_ascii=False) + "\n")
            stats.count_kept(it.record.source)
            digest.update(it.record.id.encode() + b"\0")
            for m in it.record.messages:
                digest.update(m["content"].encode() + b"\0")
    return len(window)


def _read_records(path: Path, stats: StepStats, rejects: Rejects) -> Iterator[_Item]:
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            location = f"{path.name}:{lineno}"
            try:
                record = Record.from_dict(json.loads(line))
            except (ValueError, TypeError) as e:
                stats.count_read(path.stem)
                rejects.reject(source=path.stem, reason="bad_record", detail=f"not a Record: {e}", location=location)
                continue
            stats.count_read(record.source)
            yield _Item(location, record)


async def _translate_window(
    window: list[_Item], translator: MemoryFirstTranslator, stats: StepStats, rejects: RejectWriter,
    planned: tuple[MemoryFirstTranslator, Estimate] | None = None,
) -> list[_Item]:
    """Translate a window in place; a rejected record is written to `rejects` and set to None.
    `planned` = (an estimate-only translator, its Estimate): what the window should send, counted
    before it is sent."""
    todo, units = _units(window, translator.config, rejects)
    if planned is not None:
        planned[0].estimate(units, planned[1])
    results = await translator.translate(units)
    for it, res in zip(todo, results):
        if not all(r.ok for r in res):
            _reject(it, res, rejects)
            it.record = None
        else:
            _apply(it.record, res, translator, stats)
    return window


def _units(window: list[_Item], cfg: TranslatorConfig, rejects: Rejects) -> tuple[list[_Item], list[list[Segment]]]:
    """The window's records to translate and one unit of segments each (its messages). Records already
    in the target language are left alone; one in another language than the source is rejected."""
    todo = [it for it in window if it.record.lang != cfg.target_lang]
    for it in todo:
        if it.record.lang != cfg.source_lang:
            rejects.reject(
                source=it.record.source, reason="unsupported_lang", record_id=it.record.id, location=it.location,
                detail=f"record language {it.record.lang!r}; this translator is set for {cfg.source_lang!r} -> "
                       f"{cfg.target_lang!r} (translator.source_lang)",
            )
            it.record = None
    todo = [it for it in todo if it.record is not None]
    return todo, [[Segment(m["content"], _kind(it.record, m)) for m in it.record.messages] for it in todo]


def _as_row(record: Record) -> dict:
    """`Record.to_dict()` without its deep copy (JSON needs none); 3x faster on big windows."""
    return {name: getattr(record, name) for name in _RECORD_FIELDS}


def _kind(record: Record, message: dict[str, str]) -> SegmentKind:
    is_answer = record.task == "vqa" and message["role"] == "assistant"
    if is_answer and len(message["content"].split()) <= SHORT_ANSWER_WORDS:
        return "short_answer"
    return "text"


def _apply(record: Record, results: list[SegmentResult], translator: MemoryFirstTranslator, stats: StepStats) -> None:
    cfg = translator.config
    record.messages_en = [dict(m) for m in record.messages]  # type: ignore[misc]
    record.messages = [
        {"role": m["role"], "content": r.text} for m, r in zip(record.messages, results)  # type: ignore[misc]
    ]
    record.lang = cfg.target_lang
    tokens = sum(r.usage.total for r in results)
    record.translation = {
        "backend": cfg.backend, "model": translator.model, "prompt_version": translator.prompt_version,
        "source_lang": cfg.source_lang, "target_lang": cfg.target_lang, "tokens": tokens,
        "qa": [{"ok": r.verdict.ok, "origin": r.origin} for r in results],
    }
    stats.source(record.source).extra["tokens"] += tokens


def _reject(item: _Item, results: list[SegmentResult], rejects: RejectWriter) -> None:
    rec = item.record
    failed = [(i, r) for i, r in enumerate(results) if not r.ok]
    first = failed[0][1]
    detail = " | ".join(
        f"messages[{i}] ({rec.messages[i]['role']}): {r.verdict.detail or r.verdict.reason}" for i, r in failed
    )
    rejects.reject(
        source=rec.source, reason=first.verdict.reason or "failed", detail=detail[:1000], record_id=rec.id,
        location=item.location, record=rec.to_dict(),
    )


def run(recipe: Recipe, options: TranslateOptions) -> dict:
    return run_translate(recipe, recipe.run_dir / "generate", recipe.run_dir / "translate",
                         estimate=options.estimate).to_dict()


STEP = Step("translate", run, output=lambda r: r.run_dir / "translate", section=lambda r: r.translator,
            upstream="generate", module=__name__, options=TranslateOptions)
