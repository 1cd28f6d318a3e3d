"""Step `curate`: drop duplicate and junk image-text records before anyone pays to translate them.

    stats = run_curate(recipe, run_dir / "download", run_dir / "curate")

1. index    read every record once: per distinct image file, the lowest record id of its records
            (its key: the same input keeps the same representative) and its original size.
2. measure  decode every image once, as tasks on the recipe's task runner (threads, Dask, Ray):
            content hash, 64-bit pHash, decoded size (`images.py`).
3. images   per image, in order: `undecodable_image`; size and aspect bounds (`too_small`,
            `too_large`, `extreme_aspect`); exact duplicates (same content hash) and near
            duplicates (pHash within `curate.near.threshold`, found sub-quadratically:
            curators/near_dups.py), across sources, each cluster represented by its lowest key.
            A duplicate image's records are pointed at the representative (`near.keep_text`: their
            captions are not lost) or rejected with the representative and the distance.
4. records  caption rules and language (curators/text_rules.py; captions get every rule, other
            records the language rule), exact duplicate text-only records (`duplicate_text`),
            CLIP image-text similarity of caption records when a model is configured.
5. write    records/<source>.jsonl (kept records, in input order, `meta.curate` with the figures),
            rejected/curate.jsonl (every drop, with its figures), report/ (pictures, report.md).

Several images per record (`image` a list, LLaVA-Interleave): every filter above judges each image
on its own (each has a key: `<record id>#<index>` when first seen in a multi-image record), and the
record is kept or dropped whole. It is dropped when one of its images is undecodable or out of bounds
(the detail names which, `image[1] of 3: ...`), and as a duplicate only when *every* one of its images
duplicates another (`near.keep_text: false`); otherwise each duplicate image is pointed at its
representative, as `keep_text` does. CLIP scores caption records of one image only.

A filter in `annotate` mode tags `meta.curate.flags` and drops nothing. Without a `curate:` section
the step passes the records through. Writes are atomic and `_SUCCESS` marks the end: an interrupted
run starts over (image facts are recomputed; CLIP scores come from their cache).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.files import atomic_open, clean_stale_temp_files, read_json, write_json
from common.layout import DONE_FILE
from common.progress import bar
from curators.config import CurateConfig
from curators.near_dups import confirm_clusters, find_clusters
from pipelines.core.completion import is_done, mark_done, step_storage_errors
from pipelines.core.errors import StepFailed
from pipelines.core.parallel import map_in_tasks
from pipelines.core.passthrough import pass_through
from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats
from pipelines.recipe import Recipe
from pipelines.steps.curate.images import ImageFacts, image_facts
from pipelines.steps.curate.texts import TextJudge
from templates.schema import IMAGE_PLACEHOLDER, Record, images_of

STEP_NAME = "curate"
WINDOW = 5000
"""Records checked together (language identification is batched)."""
MapFn = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


@dataclass(slots=True)
class ImageInfo:
    key: str
    """The lowest id among the image's records: the cluster representative is the lowest key."""
    original: tuple[int, int] | None = None


@dataclass(slots=True)
class ImageVerdict:
    reason: str | None = None
    detail: str = ""
    representative: str | None = None
    """The image this one duplicates (None: it is its own)."""
    distance: int = 0
    flags: list[str] = field(default_factory=list)


def run_curate(recipe: Recipe, in_dir: Path, out_dir: Path, map_fn: MapFn = map_in_tasks) -> StepStats:
    """Curate (see the module docstring). Safe to call again at any time."""
    with step_storage_errors(STEP_NAME, out_dir):
        return _curate(recipe, Path(in_dir), Path(out_dir), map_fn)


def _curate(recipe: Recipe, in_dir: Path, out_dir: Path, map_fn: MapFn) -> StepStats:
    if is_done(out_dir):
        stats = StepStats.from_dict(read_json(out_dir / "stats.json"))
        print(stats.table())
        return stats
    files = sorted((in_dir / "records").glob("*.jsonl"))
    if not files:
        raise StepFailed(f"{STEP_NAME}: {in_dir / 'records'}: no *.jsonl record files; run `vcla download` first")
    clean_stale_temp_files(out_dir)
    stats = StepStats(STEP_NAME)
    digest = hashlib.sha256()
    cfg = recipe.curate
    if cfg is None:
        pass_through(files, out_dir / "records", digest)
    else:
        _run_filters(recipe, cfg, files, out_dir, stats, digest, map_fn)
    write_json(out_dir / "stats.json", stats.to_dict())
    mark_done(out_dir, {"output_digest": digest.hexdigest()})
    print(stats.table())
    return stats


def _run_filters(recipe: Recipe, cfg: CurateConfig, files: list[Path], out_dir: Path, stats: StepStats,
                 digest: Any, map_fn: MapFn) -> None:
    images = index_images(files)
    facts = measure(sorted(images), cfg.images_per_task, map_fn, thumbs=cfg.near.max_thumbnail_diff is not None)
    verdicts = judge_images(images, facts, cfg)
    stats.extra.update(_image_counts(verdicts))
    judge = TextJudge(cfg, recipe)
    image_sha = {p: f.sha256 for p, f in facts.items() if f.sha256 and verdicts[p].reason is None}
    judge.prepare((r for _, r in iter_records(files)), image_sha)
    with RejectWriter(out_dir / "rejected", STEP_NAME, stats) as rejects:
        for path in files:
            with atomic_open(out_dir / "records" / path.name, "w", encoding="utf-8") as out:
                _write_file(path, out, verdicts, facts, judge, cfg, stats, rejects, digest)
    stats.extra.update(judge.counts)
    if cfg.report:
        from pipelines.steps.curate.report import write_step_report

        write_step_report(out_dir / "report", verdicts, facts, images, judge, stats)


def index_images(files: list[Path]) -> dict[str, ImageInfo]:
    """image file -> its key (lowest record id) and original size, from one pass over the records."""
    images: dict[str, ImageInfo] = {}
    for _, record in iter_records(files):
        refs = images_of(record)
        for i, ref in enumerate(refs):
            key = record.id if len(refs) == 1 else f"{record.id}#{i}"  # one key per image, even in one record
            info = images.get(ref)
            if info is None:
                images[ref] = ImageInfo(key, _original_size(record, i))
            elif key < info.key:
                info.key = key
    return images


def measure(paths: list[str], per_task: int, map_fn: MapFn, thumbs: bool = False) -> dict[str, ImageFacts]:
    """Decode and hash every image, `per_task` images per task, in a fixed order (whatever the runner)."""
    chunks = [(paths[i:i + per_task], thumbs) for i in range(0, len(paths), per_task)]
    facts: dict[str, ImageFacts] = {}
    with bar(len(paths), "curate: hash images", unit="img") as pb:
        for chunk_facts in map_fn(image_facts, chunks):
            for f in chunk_facts:
                facts[f.path] = f
            pb.update(len(chunk_facts))
    return facts


def judge_images(images: dict[str, ImageInfo], facts: dict[str, ImageFacts], cfg: CurateConfig
                 ) -> dict[str, ImageVerdict]:
    """Per image: undecodable, out of bounds, or a duplicate of a representative (see the module docstring)."""
    verdicts = {path: ImageVerdict() for path in images}
    for path, v in verdicts.items():
        f = facts[path]
        if f.error is not None:
            v.reason, v.detail = "undecodable_image", f.error
        elif cfg.image.mode != "off" and (bad := _bounds(images[path].original or (f.width, f.height), cfg)):
            _apply(v, cfg.image.mode, *bad)
    alive = sorted((p for p, v in verdicts.items() if v.reason is None), key=lambda p: images[p].key)
    _exact(alive, images, facts, verdicts, cfg)
    _near([p for p in alive if verdicts[p].representative is None and "duplicate_image" not in verdicts[p].flags],
          images, facts, verdicts, cfg)
    return verdicts


def _bounds(size: tuple[int, int], cfg: CurateConfig) -> tuple[str, str] | None:
    w, h = size
    short, long = min(w, h), max(w, h)
    if short < cfg.image.min_side:
        return "too_small", f"{w}x{h}: shorter side {short} < curate.image.min_side {cfg.image.min_side}"
    if cfg.image.max_side is not None and long > cfg.image.max_side:
        return "too_large", f"{w}x{h}: longer side {long} > curate.image.max_side {cfg.image.max_side}"
    if long / max(1, short) > cfg.image.max_aspect:
        return "extreme_aspect", f"{w}x{h}: aspect {long / max(1, short):.2f} > curate.image.max_aspect {cfg.image.max_aspect}"
    return None


def _apply(v: ImageVerdict, mode: str, reason: str, detail: str) -> None:
    if mode == "filter":
        v.reason, v.detail = reason, detail
    else:
        v.flags.append(reason)


def _exact(alive: list[str], images: dict[str, ImageInfo], facts: dict[str, ImageFacts],
           verdicts: dict[str, ImageVerdict], cfg: CurateConfig) -> None:
    """Same content hash: the first (lowest key) is the representative."""
    if cfg.exact.mode == "off":
        return
    first: dict[str, str] = {}
    for path in alive:
        rep = first.setdefault(facts[path].sha256, path)
        if rep != path:
            _duplicate(verdicts[path], rep, 0, "duplicate_image", cfg.exact.mode, cfg.near.keep_text, images)


def _near(alive: list[str], images: dict[str, ImageInfo], facts: dict[str, ImageFacts],
          verdicts: dict[str, ImageVerdict], cfg: CurateConfig) -> None:
    if cfg.near.mode == "off" or not alive:
        return
    by_key = {images[p].key: p for p in alive}
    keys = sorted(by_key)
    clusters = find_clusters(keys, [facts[by_key[k]].phash for k in keys], cfg.near.threshold)
    if cfg.near.max_thumbnail_diff is not None:
        members = [k for c in clusters for k in (c.representative, *(m for m, _ in c.members))]
        clusters = confirm_clusters(clusters, {k: facts[by_key[k]].phash for k in members},
                                    {k: np.frombuffer(facts[by_key[k]].thumb, np.uint8) for k in members},
                                    cfg.near.threshold, cfg.near.max_thumbnail_diff)
    for cluster in clusters:
        rep = by_key[cluster.representative]
        for key, distance in cluster.members:
            _duplicate(verdicts[by_key[key]], rep, distance, "near_duplicate_image", cfg.near.mode,
                       cfg.near.keep_text, images)


def _duplicate(v: ImageVerdict, rep: str, distance: int, reason: str, mode: str, keep_text: bool,
               images: dict[str, ImageInfo]) -> None:
    if mode == "annotate":
        v.flags.append(reason)
        return
    v.representative, v.distance = rep, distance
    if not keep_text:
        v.reason = reason
        v.detail = f"duplicate of {rep} (record {images[rep].key}), pHash distance {distance}"


def _image_counts(verdicts: dict[str, ImageVerdict]) -> dict[str, int]:
    c: Counter = Counter(images=len(verdicts))
    for v in verdicts.values():
        if v.representative is not None:
            c["duplicate_images" if v.distance == 0 else "near_duplicate_images"] += 1
        if v.reason is not None:
            c[f"images_rejected_{v.reason}"] += 1
    return dict(c)


def _write_file(path: Path, out: Any, verdicts: dict[str, ImageVerdict], facts: dict[str, ImageFacts],
                judge: TextJudge, cfg: CurateConfig, stats: StepStats, rejects: RejectWriter, digest: Any) -> None:
    window: list[tuple[str, Record]] = []
    for item in iter_records([path]):
        window.append(item)
        if len(window) >= WINDOW:
            _write_window(window, out, verdicts, facts, judge, stats, rejects, digest)
            window = []
    if window:
        _write_window(window, out, verdicts, facts, judge, stats, rejects, digest)


def _write_window(window: list[tuple[str, Record]], out: Any, verdicts: dict[str, ImageVerdict],
                  facts: dict[str, ImageFacts], judge: TextJudge, stats: StepStats, rejects: RejectWriter,
                  digest: Any) -> None:
    text_verdicts = judge.check([record for _, record in window], facts, verdicts)
    for (location, record), tv in zip(window, text_verdicts):
        stats.count_read(record.source)
        images = [verdicts[ref] for ref in images_of(record)]
        reason, detail = record_verdict(images)
        if reason is None:
            reason, detail = tv.reason, tv.detail
        if reason is not None:
            rejects.reject(source=record.source, reason=reason, detail=detail[:1000], record_id=record.id,
                           location=location, record=_figures(record, images, facts, tv.figures))
            continue
        _annotate(record, images, facts, tv)
        out.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
        stats.count_kept(record.source)
        digest.update(record.id.encode() + b"\0" + "\n".join(images_of(record)).encode() + b"\0")
        for m in record.messages:
            digest.update(m["content"].encode() + b"\0")


DUPLICATE_REASONS = ("duplicate_image", "near_duplicate_image")


def record_verdict(images: list[ImageVerdict]) -> tuple[str | None, str]:
    """(reason, detail) dropping a record for its images, or (None, ""): one image's verdict is the record's;
    of several, the first image rejected for itself (named: `image[i] of n`), or a duplicate when all are."""
    if len(images) == 1:
        return images[0].reason, images[0].detail
    where = [(f"image[{i}] of {len(images)}: ", v) for i, v in enumerate(images) if v.reason is not None]
    own = [(w, v) for w, v in where if v.reason not in DUPLICATE_REASONS]
    if own:
        return own[0][1].reason, own[0][0] + own[0][1].detail
    if where and len(where) == len(images):
        return where[0][1].reason, "every image duplicates another; " + where[0][0] + where[0][1].detail
    return None, ""


def _annotate(record: Record, images: list[ImageVerdict], facts: dict[str, ImageFacts], tv: Any) -> None:
    """`meta.curate`: the figures a later run (or a person) can filter on without recomputing. A record's
    duplicate images are pointed at their representatives (lists, in order, for a multi-image record)."""
    info: dict[str, Any] = dict(tv.figures)
    flags = list(tv.flags) + [flag for v in images for flag in v.flags]
    refs = images_of(record)
    if images:
        hashes = [facts[ref].phash for ref in refs]
        phash = [f"{h:016x}" if h is not None else None for h in hashes]
        info["phash"] = phash[0] if len(refs) == 1 else phash
        dups = [{"index": i, "image": ref, "distance": v.distance}
                for i, (ref, v) in enumerate(zip(refs, images)) if v.representative is not None]
        if dups:
            info["duplicate_of"] = {k: dups[0][k] for k in ("image", "distance")} if len(refs) == 1 else dups
            kept = [v.representative or ref for ref, v in zip(refs, images)]
            record.image = kept[0] if len(refs) == 1 else kept
    if tv.normalised is not None:
        record.messages = tv.normalised
    if flags:
        info["flags"] = sorted(set(flags))
    record.meta["curate"] = info


def _figures(record: Record, images: list[ImageVerdict], facts: dict[str, ImageFacts], text: dict) -> dict:
    """A rejected record's row: its image(s) and text, and each image's figures (a list for several)."""
    out = {"image": record.image, "text": record_text(record)[:500], **text}
    per_image = [_image_figures(facts.get(ref), v) for ref, v in zip(images_of(record), images)]
    if len(per_image) == 1:
        out.update(per_image[0])
    elif per_image:
        out["images"] = per_image
    return out


def _image_figures(f: ImageFacts | None, v: ImageVerdict) -> dict:
    if f is None:
        return {}
    return {"width": f.width, "height": f.height, "phash": f"{f.phash:016x}" if f.phash is not None else None,
            "duplicate_of": v.representative, "distance": v.distance if v.representative else None}


def record_text(record: Record) -> str:
    """The record's words: every message, `<image>` removed."""
    return "\n".join(m["content"].replace(IMAGE_PLACEHOLDER, "").strip() for m in record.messages).strip()


def iter_records(files: list[Path]) -> Iterator[tuple[str, Record]]:
    for path in files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    yield f"{path.name}:{lineno}", Record.from_dict(json.loads(line))


def _original_size(record: Record, index: int = 0) -> tuple[int, int] | None:
    """The size download saw of the record's `index`-th image (`meta.image_download`: a list for several)."""
    d = record.meta.get("image_download") or {}
    if isinstance(d, list):
        d = d[index] if index < len(d) and isinstance(d[index], dict) else {}
    w, h = d.get("original_width"), d.get("original_height")
    return (int(w), int(h)) if isinstance(w, int) and isinstance(h, int) else None
