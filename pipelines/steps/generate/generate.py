"""Step `generate`: new Chinese instruction records from each image's captions, boxes, QA and OCR
(and the image itself, for vision endpoints), through any OpenAI-compatible model.

    stats = run_generate(recipe, run_dir / "curate", run_dir / "generate")

Writes `out_dir/records/`: the upstream's record files passed through (hard links: the translate
step reads one folder) and `<generate.source_name>.jsonl`, one record per (image, kind, n) that
passed, `task: conversation`, `<image>` in the first user turn, lineage in `meta.generated` (model,
prompt id, context hash, kind, token usage, cached). Every (image, kind, n) that did not pass is a
row in `rejected/generate.jsonl` with its reason: nothing is lost. Without a `generate:` section
the step only passes the records through.

Reruns: every reply is in the response cache (SQLite, outside this folder) the moment it arrives,
so a rerun sends only what is missing and a kill -9 loses only the requests in flight. Failed
requests (a 5xx or a timeout that outlasted the retries) make the step pending (`retry_pending`),
and the flows run it again; failed checks are final (the cache replays the same replies).
`--estimate` sends nothing and prints what the run would cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from common.files import atomic_open, clean_stale_temp_files, read_json, write_json
from common.layout import DONE_FILE
from common.progress import bar
from common.retry import retryable_status, status_in
from generators.config import GenerateConfig
from generators.context import Context
from generators.generator import GenerateLedger, Generator, Job, Outcome, run_all
from generators.prompt_set import PromptError, load_prompts
from llm.cache import CacheImportError, CacheWriteError, ResponseCache
from llm.client import ChatClient
from llm.errors import EndpointError
from llm.estimate import Estimate
from pipelines.core.completion import is_done, mark_done, step_storage_errors
from pipelines.core.errors import StepFailed
from pipelines.core.passthrough import pass_through
from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats
from pipelines.recipe import Recipe
from pipelines.steps.generate.contexts import collect_contexts, image_data_url
from templates.schema import Record, make_id

log = logging.getLogger(__name__)
STEP_NAME = "generate"
WINDOWS_IN_FLIGHT = 2
TRANSIENT = {"connection_error", "timeout"}
"""Request failures a later run may not meet (with the `http_<status>` codes `common.retry` retries)."""


def run_generate(recipe: Recipe, in_dir: Path, out_dir: Path, estimate: bool = False) -> StepStats:
    """Generate (see the module docstring). Safe to call again at any time."""
    with step_storage_errors(STEP_NAME, out_dir, CacheWriteError, EndpointError):
        return asyncio.run(_generate(recipe, Path(in_dir), Path(out_dir), estimate))


async def _generate(recipe: Recipe, in_dir: Path, out_dir: Path, estimate: bool) -> StepStats:
    previous = read_json(out_dir / DONE_FILE) if is_done(out_dir) else None
    if previous is not None and not previous.get("retry_pending", 0) and not estimate:
        stats = StepStats.from_dict(read_json(out_dir / "stats.json"))
        print(stats.table())
        return stats
    records_in = in_dir / "records"
    if not sorted(records_in.glob("*.jsonl")):
        raise StepFailed(f"{STEP_NAME}: {records_in}: no *.jsonl record files; run `vcla download` and `vcla curate` "
                         "first (curate passes the records through when the recipe has no `curate:` section)")
    stats = StepStats(STEP_NAME)
    cfg = recipe.generate
    if estimate:
        return _estimate(recipe, records_in, out_dir, stats)
    clean_stale_temp_files(out_dir)
    (out_dir / DONE_FILE).unlink(missing_ok=True)
    digest = hashlib.sha256()
    upstream = read_json(in_dir / DONE_FILE) if is_done(in_dir) else {}
    digest.update(str(upstream.get("output_digest")).encode())
    own = f"{cfg.source_name}.jsonl" if cfg else None  # a rerun's own output is not the upstream's
    pass_through([p for p in sorted(records_in.glob("*.jsonl")) if p.name != own], out_dir / "records", digest)
    pending = 0
    if cfg is not None:
        recipe.require_files("generate.")
        with RejectWriter(out_dir / "rejected", STEP_NAME, stats) as rejects:
            pending = await _generate_records(recipe, records_in, out_dir, stats, rejects, digest)
    write_json(out_dir / "stats.json", stats.to_dict())
    mark_done(out_dir, {"retry_pending": pending, "output_digest": digest.hexdigest(),
                        "model": cfg.model if cfg else None})
    print(stats.table())
    return stats


async def _generate_records(recipe: Recipe, records_in: Path, out_dir: Path, stats: StepStats,
                            rejects: RejectWriter, digest: Any) -> int:
    cfg = recipe.generate
    skipped: Counter = Counter()
    contexts, heldout = collect_contexts(recipe, records_in, rejects, skipped)
    stats.extra["images"] = len(contexts)
    stats.extra["heldout_images_skipped"] = heldout
    if skipped["multi_image_records_skipped"]:  # they pass through; none is a context (contexts.py)
        stats.extra["multi_image_records_skipped"] = skipped["multi_image_records_skipped"]
    prompts = _prompts(cfg)
    ledger = GenerateLedger(cfg)
    started = time.perf_counter()
    with ResponseCache(cfg.cache_path) as cache:
        _import_cache(cache, cfg, stats)
        before = Estimate()
        client = None if cfg.backend == "cache" else ChatClient(
            cfg, ledger, kept=f"every reply received is kept in the response cache {cfg.cache_path}")
        generator = Generator(cfg, prompts, cache, client, ledger)
        jobs = plan_jobs(contexts, cfg)
        generator.estimate(jobs, before)  # what --estimate would have said, for the summary
        try:
            pending = await _run_windows(generator, jobs, out_dir, cfg, stats, rejects, digest)
        finally:
            if client is not None:
                await client.aclose()
    stats.extra.update(ledger.to_dict())
    stats.extra["seconds"] = round(time.perf_counter() - started, 1)
    _record_estimate(stats, before.to_dict(cfg), ledger)
    return pending


def plan_jobs(contexts: dict[str, Context], cfg: GenerateConfig) -> list[Job]:
    """(image, kind, n) for each kind's share of the images, chosen by a hash of the image's context
    (the same images on every run, whatever the order)."""
    jobs = []
    for image in sorted(contexts):
        ctx = contexts[image]
        h = ctx.hash()
        for kind, kc in cfg.kinds.items():
            draw = int(hashlib.sha256(f"{h}:{kind}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
            if draw < kc.share:
                jobs += [Job(ctx, kind, n) for n in range(kc.count)]
    return jobs


async def _run_windows(generator: Generator, jobs: list[Job], out_dir: Path, cfg: GenerateConfig,
                       stats: StepStats, rejects: RejectWriter, digest: Any) -> int:
    """Jobs in windows of `window_images` images, `WINDOWS_IN_FLIGHT` at once (the slow tail of one
    window overlaps the next: no barrier), outcomes written in job order as each window completes."""
    pending = 0
    path = out_dir / "records" / f"{cfg.source_name}.jsonl"
    in_flight: deque[tuple[list[Job], asyncio.Task[list[Outcome]]]] = deque()

    def drain(window: list[Job], outcomes: list[Outcome]) -> int:
        n = 0
        for outcome in outcomes:
            n += _write(outcome, cfg, out, stats, rejects, digest)
            outcome.job.image_url = None
        pb.update(len(window))
        return n

    with atomic_open(path, "w", encoding="utf-8") as out, bar(len(jobs), "generate", unit="record") as pb:
        try:
            for window in _image_windows(jobs, cfg.window_images):
                if cfg.context != "annotations":
                    for job in window:
                        job.image_url = image_data_url(job.context.image, cfg.image_max_side)
                in_flight.append((window, asyncio.create_task(run_all(generator, window))))
                if len(in_flight) >= WINDOWS_IN_FLIGHT:
                    window, task = in_flight.popleft()
                    pending += drain(window, await task)
            while in_flight:
                window, task = in_flight.popleft()
                pending += drain(window, await task)
        except BaseException:
            for _, task in in_flight:
                task.cancel()
            await asyncio.gather(*(t for _, t in in_flight), return_exceptions=True)
            raise
    return pending


def _image_windows(jobs: list[Job], images: int) -> Iterator[list[Job]]:
    """Consecutive jobs grouped so that each window holds the jobs of at most `images` images."""
    window: list[Job] = []
    seen: set[str] = set()
    for job in jobs:
        if job.context.image not in seen and len(seen) >= images:
            yield window
            window, seen = [], set()
        seen.add(job.context.image)
        window.append(job)
    if window:
        yield window


def _write(o: Outcome, cfg: GenerateConfig, out: IO, stats: StepStats, rejects: RejectWriter, digest: Any) -> int:
    """Write one outcome (record or rejection); returns 1 when a later run should retry it."""
    job = o.job
    source = cfg.source_name
    record_id = make_id(source, f"{o.context_hash}:{job.kind}:{job.index}")
    stats.count_read(source)
    if o.messages is None:
        rejects.reject(source=source, reason=o.reason or "failed", detail=o.detail[:1000], record_id=record_id,
                       location=f"{job.context.image}#{job.kind}[{job.index}]",
                       record={"image": job.context.image, "kind": job.kind, "index": job.index,
                               "context_hash": o.context_hash, "reply": (o.reply or "")[:2000]})
        transient = o.reason in TRANSIENT or retryable_status(status_in(o.reason or "", "http_"))
        return int(transient)
    record = Record(
        id=record_id, source=source, task="conversation", messages=o.messages, image=job.context.image,
        lang=cfg.language,
        meta={"generated": {"kind": job.kind, "model": cfg.model, "prompt_version": o.prompt_id,
                            "context_hash": o.context_hash, "context": cfg.context, "usage": o.usage.to_dict(),
                            "unsupported_objects": o.unsupported}},
    )
    out.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
    stats.count_kept(source)
    stats.source(source).extra[f"kept_{job.kind}"] += 1
    digest.update(record.id.encode() + b"\0" + json.dumps(record.messages, ensure_ascii=False).encode() + b"\0")
    return 0


def _prompts(cfg: GenerateConfig):
    try:
        return load_prompts(cfg)
    except PromptError as e:
        raise StepFailed(f"{STEP_NAME}: {e}") from None


def _import_cache(cache: ResponseCache, cfg: GenerateConfig, stats: StepStats) -> None:
    for i, path in enumerate(cfg.cache_import):
        try:
            stats.extra["cache_imported_rows"] += cache.import_jsonl(path)
        except CacheImportError as e:
            raise StepFailed(f"{STEP_NAME}: generate.cache_import[{i}]: {e} (or remove the file from "
                             "generate.cache_import)") from None


def _record_estimate(stats: StepStats, estimate: dict[str, Any], ledger: GenerateLedger) -> None:
    """The estimate beside what the endpoint billed, for the summary."""
    usage = next(iter(ledger.usage.values()), None)
    for k in ("requests", "input_tokens", "output_tokens", "cost_usd"):
        stats.extra[f"estimate_{k}"] = estimate[k]
    stats.extra["actual_input_tokens"] = usage.prompt_tokens if usage else 0
    stats.extra["actual_output_tokens"] = usage.completion_tokens if usage else 0


def _estimate(recipe: Recipe, records_in: Path, out_dir: Path, stats: StepStats) -> StepStats:
    cfg = recipe.generate
    if cfg is None:
        print(f"[{STEP_NAME}] the recipe has no `generate:` section: nothing would be sent")
        return stats
    recipe.require_files("generate.")
    with ResponseCache(cfg.cache_path) as cache:
        contexts, _ = collect_contexts(recipe, records_in, None)
        _import_cache(cache, cfg, stats)
        generator = Generator(cfg, _prompts(cfg), cache, None, GenerateLedger(cfg))
        est = Estimate()
        generator.estimate(plan_jobs(contexts, cfg), est)
    print(est.table(cfg, f"[{STEP_NAME}] {len(contexts):,} images"))
    stats.extra.update({f"estimate_{k}": v for k, v in est.to_dict(cfg).items() if v is not None})
    return stats
