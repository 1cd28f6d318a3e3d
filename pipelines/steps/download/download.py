"""The download step: read every source, fetch each distinct image once with img2dataset,
join the images back to the records.

    stats = run_download(recipe, Path("runs/demo/download"))

1. read   every `recipe.sources` entry (streaming, validated: `pipelines.sources`) into a
          spool file; collect the distinct image URLs (a COCO image asked about by twenty
          VQA questions is fetched once). Local paths become file:// URLs; only http(s), and
          file:// under `download.allowed_file_roots` (or the source's own image_root), are
          fetched.
2. fetch  the sorted URL list with `img2dataset.download` (output "files": one image file
          per URL plus a parquet of status and error per shard), with `CheckedResizer`
          (pipelines/steps/download/images.py) in front of img2dataset's resizer.
3. join   records to results by URL: records/<source>.jsonl gets each record with `image`
          set to the local file; a record whose image failed goes to rejected/download.jsonl
          with img2dataset's error message. Text-only records pass through. A multi-image record
          (`image` a list: LLaVA-Interleave) gets the list of its local files, in order, or is
          rejected whole with the reason of its first failed image, the detail naming which.

Rerun after a crash: img2dataset's incremental mode skips shards it finished (the URL list
is sorted, so shards are stable; if the list changed, the images are fetched anew), and
steps 1 and 3 are recomputed from scratch, so the join is idempotent. A complete step
(`_SUCCESS`) is not run again, unless it left images that failed for a cause a later run may
not meet (`TRANSIENT`: a timeout, a refused or dropped connection, HTTP 408/425/429/5xx): its
`_SUCCESS` counts their records (`retry_pending`), the flows run it again (pipelines/orchestration/flows.py),
and that run marks unfinished only the shards holding such a failure, so img2dataset fetches
only those shards again, then re-joins. A 404, a file that is not an image, a bomb stay rejected.
A host that stays down keeps the step pending for `MAX_RERUNS` reruns, not for ever (`reruns`
in `_SUCCESS`). `_SUCCESS` also holds `output_digest`, a hash of the records files: a rerun that
healed nothing leaves it unchanged, so the steps downstream are not redone.

Memory: one entry per distinct URL (the URL set and the results map); records stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.retry import retryable_status, status_in
from common.files import atomic_open, clean_stale_temp_files, read_json, write_json
from common.image_refs import ImageRefError, parse_image_ref
from common.layout import DONE_FILE
from common.storage import WRITE_FAILED, storage_message
from pipelines.core.completion import is_done, mark_done, step_storage_errors
from pipelines.core.errors import StepFailed
from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats
from pipelines.recipe import DownloadConfig, Recipe, RecipeError
from pipelines.sources import read_located
from pipelines.steps.download.images import CheckedResizer
from templates.schema import Record

STEP_NAME = "download"
IMAGES = "images"
URL_LIST = "url_list.parquet"
SPOOL = ".read"
SHARD_DIGITS = 5  # img2dataset's oom_shard_count: shard names are 00000, 00001, ...
TRANSIENT = {"image_timeout", "image_connection_error"}
"""Failures a later run may not meet (and the HTTP statuses `common.retry` calls retryable): their records make
the step pending (`retry_pending`), and a rerun fetches their shards again."""
MAX_RERUNS = 3
"""A host that stays down (or keeps answering 503) keeps the step pending for this many reruns only."""


@dataclass(slots=True)
class Fetched:
    """img2dataset's verdict on one URL."""

    status: str  # "success" | "failed_to_download" | "failed_to_resize"
    error: str | None = None
    path: str | None = None
    key: str | None = None
    info: dict[str, Any] | None = None


# -- the step -------------------------------------------------------------------------------
def run_download(recipe: Recipe, out_dir: Path) -> StepStats:
    """Run the download step into `out_dir`; returns its stats (also in out_dir/stats.json).
    A full disk or a permission error stops the step with a message naming the path."""
    with step_storage_errors(STEP_NAME, out_dir):
        return _download(recipe, Path(out_dir))


def _download(recipe: Recipe, out_dir: Path) -> StepStats:
    previous = read_json(out_dir / DONE_FILE) if is_done(out_dir) else None
    if previous is not None and not previous.get("retry_pending", 0):
        stats = StepStats.from_dict(read_json(out_dir / "stats.json"))
        print(f"[{STEP_NAME}] {out_dir} is complete (_SUCCESS); nothing to do")
        print(step_table(stats))
        return stats
    reruns = previous.get("reruns", 0) + 1 if previous is not None else 0
    check_source_files(recipe)
    check_distributor(recipe)
    clean_stale_temp_files(out_dir)
    if previous is not None:
        reopen_transient_shards(out_dir / IMAGES, previous["retry_pending"], reruns)
        (out_dir / DONE_FILE).unlink()
    clock = PhaseTimer()
    stats = StepStats(step=STEP_NAME)
    with RejectWriter(out_dir / "rejected", STEP_NAME, stats) as rejects:
        source_urls = collect(recipe, out_dir, rejects)
        urls = sorted(set().union(*source_urls.values()))
        clock.lap(stats, "read")
        results: dict[str, Fetched] = {}
        if urls:
            fetch(urls, out_dir, recipe.download)
            clock.lap(stats, "fetch")
            results = load_results(out_dir / IMAGES, recipe.download.encode_format)
            check_all_fetched(out_dir / IMAGES, urls, results, recipe.download.samples_per_shard)
        for source in recipe.sources:
            join(source.name, out_dir, results, rejects)
        clock.lap(stats, "join")
    count_images(stats, source_urls, results)
    stats.extra["seconds"] = round(clock.total(), 2)
    write_json(out_dir / "stats.json", stats.to_dict())
    shutil.rmtree(out_dir / SPOOL, ignore_errors=True)
    transient = sum(n for reason, n in stats.rejected.items() if is_transient(reason))
    pending = transient if reruns < MAX_RERUNS else 0
    if transient and not pending:
        print(f"[{STEP_NAME}] {transient} records still lack an image that failed for a transient cause after "
              f"{reruns} reruns; they stay rejected (rejected/{STEP_NAME}.jsonl) and the step is complete")
    mark_done(out_dir, {"images": len(urls), "records": stats.kept, "retry_pending": pending, "reruns": reruns,
                        "output_digest": records_digest(out_dir, [s.name for s in recipe.sources])})
    print(step_table(stats))
    return stats


class PhaseTimer:
    """Seconds per phase into stats.extra ("seconds.read", ...): where the time went."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def lap(self, stats: StepStats, phase: str) -> None:
        now = time.monotonic()
        stats.extra[f"seconds.{phase}"] = round(now - self.last, 2)
        self.last = now

    def total(self) -> float:
        return time.monotonic() - self.start


def check_source_files(recipe: Recipe) -> None:
    """RecipeError for a source file or local image_root that does not exist.

    (Not `recipe.require_files`: an image_root may be a URL prefix.)"""
    for i, cfg in enumerate(recipe.sources):
        for key in ("path", "annotations", "image_root"):
            value = getattr(cfg, key)
            local = local_folder(value) if key == "image_root" and value else value
            if local is None:
                continue  # not given, or a remote URL prefix
            if not Path(local).exists():
                raise RecipeError(
                    f"{recipe.file}: sources[{i}].{key} (source {cfg.name!r}): not found: {value} "
                    f"(fix the recipe or pass --set sources.{i}.{key}=PATH)"
                )


def check_distributor(recipe: Recipe) -> None:
    """img2dataset silently does nothing when ray is missing: RecipeError naming the key and the
    package to install, before starting (also `vcla`'s pre-flight)."""
    distributor = recipe.download.distributor
    module = {"pyspark": "pyspark", "ray": "ray"}.get(distributor)
    if module is None:
        return
    try:
        __import__(module)
    except ImportError:
        raise RecipeError(
            f"{recipe.file}: download.distributor: {distributor!r} needs the {module!r} package, which is not "
            f"installed: pip install {module} (or --set download.distributor=multiprocessing)"
        ) from None


# -- 1. read ----------------------------------------------------------------------------------
def collect(recipe: Recipe, out_dir: Path, rejects: RejectWriter) -> dict[str, set[str]]:
    """Read and validate every source into out_dir/.read/<source>.jsonl; returns, per source,
    the distinct image URLs its records need.

    Local files may come from `download.allowed_file_roots` and, for a source's own records,
    from its local `image_root` (the recipe named that folder; `..` or symlinks out of it
    are still refused)."""
    allowed = [os.path.realpath(r) for r in recipe.download.allowed_file_roots]
    source_urls: dict[str, set[str]] = {}
    for cfg in recipe.sources:
        own = local_folder(cfg.image_root) if cfg.image_root else None
        roots = allowed + [own] if own else allowed
        urls: set[str] = set()
        spool = out_dir / SPOOL / f"{cfg.name}.jsonl"
        with atomic_open(spool, "w", encoding="utf-8") as f:
            for location, record in read_located(cfg, rejects):
                try:
                    url = record_urls(record, roots)
                except ImageRefError as err:
                    rejects.reject(source=cfg.name, reason=err.reason, detail=str(err), record_id=record.id,
                                   location=location, record=record.to_dict())
                    continue
                urls.update([url] if isinstance(url, str) else url or ())
                f.write(json.dumps([location, url, record.to_dict()], ensure_ascii=False) + "\n")
        source_urls[cfg.name] = urls
    return source_urls


def record_urls(record: Record, roots: list[str]) -> str | list[str] | None:
    """The URL(s) of a record's image(s): one for a one-image record, a list (in order) for a multi-image
    one, None for text. ImageRefError names which image of a multi-image record was refused."""
    if not isinstance(record.image, list):
        return None if record.image is None else image_url(record.image, roots)
    urls = []
    for i, ref in enumerate(record.image):
        try:
            urls.append(image_url(ref, roots))
        except ImageRefError as err:
            raise ImageRefError(err.reason, f"image[{i}] of {len(record.image)}: {err}") from None
    return urls


def local_folder(location: str) -> str | None:
    """The real path of a folder given as a path or file:// URL; None for a remote prefix."""
    try:
        path = parse_image_ref(location).path
    except ImageRefError:
        return None
    return None if path is None else os.path.realpath(path)


def image_url(ref: str, allowed_roots: list[str]) -> str:
    """The URL img2dataset should fetch for an image reference, or ImageRefError.

    http(s) URLs pass; a local path or file:// URL (common.image_refs.parse_image_ref: on this
    host, percent-decoded) must lie under one of `allowed_roots` (already realpath'd) and becomes a
    file:// URL of its real path."""
    parsed = parse_image_ref(ref)
    if parsed.url is not None:
        return parsed.url
    real = os.path.realpath(parsed.path)
    if not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in allowed_roots):
        raise ImageRefError(
            "image_url_not_allowed",
            f"{real} is outside the folders local images may come from {allowed_roots} "
            "(download.allowed_file_roots, and the source's own image_root); add its folder to "
            "download.allowed_file_roots to allow it",
        )
    return Path(real).as_uri()


# -- 2. fetch ---------------------------------------------------------------------------------
def fetch(urls: list[str], out_dir: Path, cfg: DownloadConfig) -> None:
    """Fetch `urls` into out_dir/images with img2dataset; finished shards are kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    url_list, images, marker = out_dir / URL_LIST, out_dir / IMAGES, out_dir / "fetch.sha256"
    fingerprint = fetch_fingerprint(urls, cfg)
    same = marker.is_file() and marker.read_text().strip() == fingerprint
    if not (cfg.incremental and same):
        # Not img2dataset's "overwrite" mode: it deletes the _tmp folder it has just made.
        shutil.rmtree(images, ignore_errors=True)
    drop_broken_shard_markers(images)
    with atomic_open(url_list, "wb") as f:
        pq.write_table(pa.table({"url": urls}), f)
    with atomic_open(marker, "w") as f:
        f.write(fingerprint + "\n")
    shards = -(-len(urls) // cfg.samples_per_shard)
    done = sum((images / f"{i:0{SHARD_DIGITS}d}_stats.json").is_file() for i in range(shards))
    if done == shards:
        print(f"[{STEP_NAME}] all {shards} img2dataset shards are complete; nothing to fetch")
        return
    print(f"[{STEP_NAME}] fetching {len(urls)} distinct images with img2dataset: {shards - done} of {shards} shards to do")
    with checked_resizer(cfg.max_image_pixels), worker_env(cfg.max_image_pixels), ray_cluster(cfg):
        import img2dataset

        img2dataset.download(**img2dataset_args(cfg, str(url_list), str(images)))


def drop_broken_shard_markers(images: Path) -> None:
    """img2dataset writes `<shard>_stats.json` (its "shard done" marker) in place: a run killed while
    writing it leaves an empty or cut file that still counts as done. Remove such a marker, so the
    shard is fetched again."""
    for marker in images.glob("*_stats.json"):
        try:
            json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            print(f"[{STEP_NAME}] {marker} was cut off by a crash; fetching that shard again")
            marker.unlink()


def reopen_transient_shards(images: Path, pending: int, reruns: int) -> list[str]:
    """Mark unfinished (`<shard>_stats.json` removed) the finished shards holding an image that failed
    for a transient cause, so img2dataset fetches those shards again, and only those. Returns their names."""
    import pyarrow.parquet as pq

    names = []
    for marker in sorted(images.glob("*_stats.json")):
        name = marker.name.removesuffix("_stats.json")
        shard = images / f"{name}.parquet"
        if not shard.is_file():
            continue
        rows = pq.read_table(shard, columns=["status", "error_message"]).to_pylist()
        if any(r["status"] != "success" and is_transient(failure(Fetched(r["status"], r["error_message"]))[0])
               for r in rows):
            marker.unlink()
            names.append(name)
    print(f"[{STEP_NAME}] the last run left {pending} records whose image failed for a transient cause; "
          f"rerun {reruns} of at most {MAX_RERUNS}: fetching shard(s) {', '.join(names) or '-'} again")
    return names


def is_transient(reason: str) -> bool:
    """Whether an image failure (`classify`) may not happen again: a timeout, a connection, HTTP 429/5xx."""
    return reason in TRANSIENT or retryable_status(status_in(reason, "image_http_"))


def records_digest(out_dir: Path, sources: list[str]) -> str:
    """sha256 over the records files: what the steps downstream read (for `output_digest`)."""
    h = hashlib.sha256()
    for name in sources:
        path = out_dir / "records" / f"{name}.jsonl"
        h.update(name.encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def check_all_fetched(images: Path, urls: list[str], results: dict[str, Fetched], per_shard: int) -> None:
    """StepFailed if img2dataset has no verdict for some URLs: it gave up on a shard, or could not
    write an image (it prints the error and goes on). Marking the step done would drop those
    records for good (a finished step is not rerun), so their shards are marked unfinished (stats
    file removed: the next run fetches them again) and the step stops."""
    shards = sorted({i // per_shard for i, url in enumerate(urls) if url not in results})
    if not shards:
        return
    names = [f"{i:0{SHARD_DIGITS}d}" for i in shards]
    for name in names:
        (images / f"{name}_stats.json").unlink(missing_ok=True)

    missing = sum(url not in results for url in urls)
    raise StepFailed(f"{STEP_NAME}: " + storage_message(
        f"img2dataset has no result for {missing} of {len(urls)} images, in shard(s) {', '.join(names)} "
        f"of {-(-len(urls) // per_shard)} in {images}", "it could not fetch or write them", WRITE_FAILED[1], images,
        detail="its errors are printed above; usually a full disk or a folder it may not write to",
        then="run the same command again: only these shards are fetched again"))


def fetch_fingerprint(urls: list[str], cfg: DownloadConfig) -> str:
    """What finished shards depend on: the URL list and the options that shape an image.
    If it changed since they were made, they are not reused."""
    shaping = cfg.model_dump(include={"image_size", "resize_mode", "encode_format", "encode_quality",
                                      "samples_per_shard", "max_image_pixels"})
    h = hashlib.sha256(json.dumps(shaping, sort_keys=True).encode("utf-8"))
    for url in urls:
        h.update(url.encode("utf-8") + b"\n")
    return h.hexdigest()


def img2dataset_args(cfg: DownloadConfig, url_list: str, output_folder: str) -> dict[str, Any]:
    """The recipe's download section as img2dataset.download keyword arguments."""
    return {
        "url_list": url_list,
        "input_format": "parquet",
        "url_col": "url",
        "output_folder": output_folder,
        "output_format": "files",
        "image_size": cfg.image_size,
        "resize_mode": cfg.resize_mode,
        "encode_format": cfg.encode_format,
        # img2dataset reads PNG "quality" as a zlib level 0-9
        "encode_quality": cfg.encode_quality if cfg.encode_format != "png" else 6,
        "processes_count": cfg.processes,
        "thread_count": cfg.threads,
        "retries": cfg.retries,
        "timeout": cfg.timeout_s,
        "number_sample_per_shard": cfg.samples_per_shard,
        "oom_shard_count": SHARD_DIGITS,
        "incremental_mode": "incremental",  # skip shards with a *_stats.json
        "distributor": cfg.distributor,
        "extract_exif": False,  # orientation is applied by CheckedResizer; EXIF text is not kept
        "compute_hash": "sha256",
        "enable_wandb": False,
    }


@contextmanager
def checked_resizer(max_image_pixels: int) -> Iterator[None]:
    """Make `img2dataset.download` build our CheckedResizer instead of its Resizer.

    download() takes no resizer argument; it constructs `img2dataset.main.Resizer` and
    pickles it into the workers, so replacing that name for the call is enough, for every
    distributor (the workers import `pipelines.steps.download.images` to unpickle it)."""
    import functools
    import importlib


    # `import img2dataset.main` would give the package's `main` function, not the module
    i2d_main = importlib.import_module("img2dataset.main")

    original = i2d_main.Resizer
    i2d_main.Resizer = functools.partial(CheckedResizer, max_image_pixels=max_image_pixels)
    try:
        yield
    finally:
        i2d_main.Resizer = original


@contextmanager
def ray_cluster(cfg: DownloadConfig) -> Iterator[None]:
    """For `distributor: ray`: a local Ray cluster of `download.processes` CPUs for the fetch, unless
    one is running (`RAY_ADDRESS`, or `ray.init` by the caller). Left to itself img2dataset's first
    remote call would start one on every core, with its dashboard, and leave it running."""
    if cfg.distributor != "ray":
        yield
        return
    import ray

    if ray.is_initialized() or os.environ.get("RAY_ADDRESS"):
        yield
        return
    ray.init(num_cpus=cfg.processes, include_dashboard=False, namespace="vcla-download")
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def worker_env(max_image_pixels: int) -> Iterator[None]:
    """Environment the (spawned) download workers inherit:
    OPENCV_IO_MAX_IMAGE_PIXELS stops OpenCV allocating a bomb Pillow could not identify;
    NO_ALBUMENTATIONS_UPDATE stops each worker asking PyPI for a newer albumentations."""
    wanted = {"OPENCV_IO_MAX_IMAGE_PIXELS": str(max_image_pixels), "NO_ALBUMENTATIONS_UPDATE": "1"}
    saved = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def load_results(images_dir: Path, encode_format: str) -> dict[str, Fetched]:
    """URL -> what img2dataset did with it, from the per-shard parquet files.

    Only shards with a `<shard>_stats.json` are complete; a URL without a result (in an unfinished
    shard, or one img2dataset could not write) stops the step before the join (`check_all_fetched`)."""
    import pyarrow.parquet as pq

    results: dict[str, Fetched] = {}
    columns = ["url", "key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256"]
    for shard in sorted(images_dir.glob("*.parquet")):
        if not (images_dir / f"{shard.stem}_stats.json").is_file():
            continue
        for row in pq.read_table(shard, columns=columns).to_pylist():
            path = None
            if row["status"] == "success":
                path = str((images_dir / shard.stem / f"{row['key']}.{encode_format}").resolve())
            info = {k: row[k] for k in ("width", "height", "original_width", "original_height", "sha256")}
            results[row["url"]] = Fetched(row["status"], row["error_message"], path, row["key"], info)
    return results


# -- 3. join ----------------------------------------------------------------------------------
def join(source: str, out_dir: Path, results: dict[str, Fetched], rejects: RejectWriter) -> None:
    """records/<source>.jsonl from the spool and the fetch results (rewritten whole)."""
    stats = rejects.stats
    spool = out_dir / SPOOL / f"{source}.jsonl"
    with atomic_open(out_dir / "records" / f"{source}.jsonl", "w", encoding="utf-8") as out, open(spool, encoding="utf-8") as f:
        for line in f:
            location, url, data = json.loads(line)
            record = Record.from_dict(data)
            if url is not None:
                refused = attach_images(record, url, results)
                if refused is not None:
                    rejects.reject(source=source, reason=refused[0], detail=refused[1], record_id=record.id,
                                   location=location, record=data)
                    continue
            out.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            stats.count_kept(source)


def attach_images(record: Record, url: str | list[str], results: dict[str, Fetched]) -> tuple[str, str] | None:
    """Point the record at its fetched file(s) (`image`; `meta.image_url`, `meta.image_download`: a list, in
    order, for a multi-image record), or (reason, detail) of the first image that did not come back (the
    detail names which: `image[1] of 2: URL: ...`); a multi-image record is kept whole or not at all."""
    urls = [url] if isinstance(url, str) else url
    got = [results.get(u) for u in urls]
    for i, (u, fetched) in enumerate(zip(urls, got)):
        if fetched is None or fetched.path is None:
            reason, detail = failure(fetched)
            where = f"image[{i}] of {len(urls)}: " if isinstance(url, list) else ""
            return reason, f"{where}{u}: {detail}"
    downloads = [{"key": f.key, **(f.info or {})} for f in got]
    if isinstance(url, str):
        record.meta["image_url"], record.meta["image_download"], record.image = url, downloads[0], got[0].path
    else:
        record.meta["image_url"], record.meta["image_download"] = list(urls), downloads
        record.image = [f.path for f in got]
    return None


def failure(fetched: Fetched | None) -> tuple[str, str]:
    """(reason, detail) for an image that did not come back. The detail is img2dataset's
    error message as it was stored; the reason is a short stable name for the stats."""
    if fetched is None:
        return "image_not_fetched", "img2dataset has no result for this URL (its shard did not finish; rerun to retry)"
    message = fetched.error or fetched.status
    return classify(message), f"{fetched.status}: {message}"


def classify(message: str) -> str:
    head = message.split(":", 1)[0]
    if head.startswith("image_") and " " not in head:
        return head  # CheckedResizer's "<reason>: <detail>"
    lower = message.lower()
    if lower.startswith("http error "):
        code = lower.split()[2].rstrip(":")
        return f"image_http_{code}" if code.isdigit() else "image_http_error"
    if "timed out" in lower or "timeout" in lower:
        return "image_timeout"
    if "no such file" in lower or "errno 2" in lower:
        return "image_missing"
    if "x-robots-tag" in lower:
        return "image_disallowed"
    if "image decoding error" in lower or "cv_io_max_image_pixels" in lower:
        return "image_too_large" if "cv_io_max_image_pixels" in lower else "image_decode_failed"
    if ("urlopen error" in lower or "connection" in lower or "remote end closed" in lower
            or "incompleteread" in lower):  # the connection dropped mid-body
        return "image_connection_error"
    return "image_failed"


# -- report -----------------------------------------------------------------------------------
def count_images(stats: StepStats, source_urls: dict[str, set[str]], results: dict[str, Fetched]) -> None:
    """Distinct images per source and in total: requested, fetched, failed by reason."""
    def add(target: StepStats, urls: set[str]) -> None:
        target.extra["images_requested"] += len(urls)
        for url in urls:
            fetched = results.get(url)
            if fetched is not None and fetched.path is not None:
                target.extra["images_fetched"] += 1
            else:
                target.extra["images_failed"] += 1
                target.extra[f"images_failed.{failure(fetched)[0]}"] += 1

    for name, urls in source_urls.items():
        add(stats.source(name), urls)
    add(stats, set().union(*source_urls.values()) if source_urls else set())


def step_table(stats: StepStats) -> str:
    """StepStats.table() followed by the images table: per source, distinct images
    requested, fetched and failed by reason."""
    rows = [(name, s) for name, s in sorted(stats.per_source.items())] + [("TOTAL", stats)]
    width = max(len(name) for name, _ in rows)
    lines = [stats.table(), f"{'images':<{width}}  {'wanted':>8}  {'fetched':>8}  {'failed':>8}  reasons"]
    for name, s in rows:
        failed = Counter({k.split(".", 1)[1]: v for k, v in s.extra.items() if k.startswith("images_failed.")})
        reasons = ", ".join(f"{r}={n}" for r, n in sorted(failed.items())) or "-"
        lines.append(
            f"{name:<{width}}  {s.extra['images_requested']:>8}  {s.extra['images_fetched']:>8}  "
            f"{s.extra['images_failed']:>8}  {reasons}"
        )
    return "\n".join(lines)
