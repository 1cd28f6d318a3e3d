"""Render: translated records -> training rows of both subsets (`pretrain`, `sft`) -> Parquet shards.

    stats = run_render(recipe, Path("runs/demo/translate"), Path("runs/demo/render"))

Blocks, in order (each counts what it kept and rejects with a reason, never raises on data):

1. `read_records`: every line of ``in_dir/records/*.jsonl`` (files in name order) as a `Record`.
2. `RowBuilder.build`: caption records become stage-1 (`pretrain`) rows with the pre-training
   template; vqa / conversation / text records become stage-2 (`sft`) rows. The image files are
   read, checked and embedded (one in `image`, several in `images`, in marker order); the split is
   chosen by the first image's sha256 (text rows: by id), so no image is in both train and
   validation. Each row is then fitted to its stage's max_length (`lengths.LengthRule`: trailing
   turns dropped, or the row rejected as `too_long`), measured with the LLM's tokenizer.
3. Spill (`pipelines.shards.BucketSpill`) by a seeded hash of the id: the external shuffle.
4. `plan_mix`: counts distinct multimodal and text-only sft rows per split and finds which text
   rows to keep so that text = round(text_per_multimodal x multimodal) per split (the
   lowest seeded hashes win), reading only small columns.
5. `write_shards`: buckets in key order, duplicates of an id dropped (first in input order
   wins), text rows over the ratio dropped, the rest streamed into rolling shards per
   (subset, split).

Memory is bounded by one bucket plus the writers' row-group buffers, whatever the corpus size.
The output depends only on the input and the recipe: rerunning gives identical shard bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image, UnidentifiedImageError

from common.files import clean_stale_temp_files, read_json, rename_into_place, write_json
from common.image_refs import ImageRefError, parse_image_ref
from common.progress import bar, count_lines, counted
from common.storage import storage_guard
from pipelines.core.completion import is_done, mark_done, step_storage_errors
from pipelines.core.errors import StepFailed
from pipelines.core.rejects import RejectWriter
from pipelines.core.stats import StepStats
from pipelines.steps.render.card import write_card_files
from pipelines.steps.render.lengths import LengthRule, histogram, length_rules, summary
from pipelines.steps.render.shards import (
    KEY,
    ORDER,
    BucketSpill,
    ShardFile,
    ShardWriter,
    bucket_files,
    finalize,
    first_of_each_id,
    read_bucket,
    remove_tree,
    sort_order,
    sorted_bucket,
)
from templates.image import count_image_blocks
from templates.instructions import (
    HintPolicy,
    InstructionError,
    caption_of,
    image_placement,
    instruction_pairs,
    sharegpt_messages,
)
from templates.registry import AUTO, get_template
from templates.rows import LINEAGE_FIELDS, ROW_SCHEMA, SPLITS, SUBSETS
from templates.schema import Record, images_of
from templates.template import Template, render_turns

STEP_NAME = "render"
SEL, SPLIT, MIX, LOC, LEN = "_sel", "_split", "_mix", "_loc", "_len"
HIDDEN = {KEY: pa.uint64(), SEL: pa.uint64(), SPLIT: pa.string(), MIX: pa.bool_(), ORDER: pa.int64(), LOC: pa.string(),
          LEN: pa.int32()}
"""Columns a row carries through the shuffle only: shuffle key, mix hash, split, text-only flag,
input position, input location (for rejections), token length (null when not measured)."""
IMAGE_COLUMNS = ["image", "images"]
HIDDEN_COLUMNS = tuple(HIDDEN)
SPILL_SCHEMA = pa.schema([*ROW_SCHEMA.remove_metadata(), *(pa.field(k, t) for k, t in HIDDEN.items())])
IMAGE_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
MAX_BUCKETS = 256
Mapper = Callable[[Callable[[Any], Any], list[Any]], list[Any]]


class RenderReject(Exception):
    def __init__(self, reason: str, detail: str = "", figures: dict | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.figures = reason, detail, figures


def seeded_hash(seed: int, purpose: str, value: str) -> int:
    """A 64-bit hash of `value`, independent per seed and purpose (shuffle, mix, split)."""
    digest = hashlib.blake2b(f"{seed}\x1f{purpose}\x1f{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


# ---- 1. read ---------------------------------------------------------------------------------

def read_records(files: list[Path], rejects: RejectWriter) -> Iterator[tuple[Record, str]]:
    """Every record line of `files` with its location ``file:line``; bad lines are rejected."""
    for path in files:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                loc = f"{path.name}:{lineno}"
                try:
                    data = json.loads(raw.decode("utf-8"))
                    if b"\\u" in raw:  # an escaped lone surrogate parses but cannot be written as UTF-8
                        json.dumps(data, ensure_ascii=False).encode("utf-8")
                    record = Record.from_dict(data)
                except (ValueError, TypeError) as e:
                    rejects.stats.count_read(path.stem)
                    rejects.reject(source=path.stem, reason="bad_record", detail=str(e)[:300], location=loc)
                    continue
                rejects.stats.count_read(record.source)
                yield record, loc


# ---- 2. build rows ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LoadedImage:
    data: bytes
    sha256: str
    name: str


class ImageLoader:
    """Reads, checks and hashes image files; keeps the last few (VQA reuses an image many times)."""

    def __init__(self, base: Path, cache_bytes: int = 16 << 20) -> None:
        self.base = base
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[str, LoadedImage] = OrderedDict()
        self._cached = 0

    def load(self, ref: str) -> LoadedImage:
        if ref in self._cache:
            self._cache.move_to_end(ref)
            return self._cache[ref]
        image = self._read(ref)
        self._cache[ref] = image
        self._cached += len(image.data)
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            self._cached -= len(self._cache.popitem(last=False)[1].data)
        return image

    def resolve(self, ref: str) -> Path:
        """The local file a record's image names: a path (relative to the input folder if the file
        is there) or a file:// URL, percent-decoded (common.image_refs); RenderReject otherwise."""
        try:
            parsed = parse_image_ref(ref)
        except ImageRefError as e:
            raise RenderReject(e.reason, e.detail) from None
        if parsed.path is None:
            raise RenderReject("image_not_local", f"{ref} (render needs the downloaded file)")
        path = Path(parsed.path)
        if not path.is_absolute() and (self.base / path).is_file():
            return self.base / path
        return path

    def _read(self, ref: str) -> LoadedImage:
        path = self.resolve(ref)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise RenderReject("image_not_found", f"{path}: {e.strerror or e}") from None
        try:
            with Image.open(BytesIO(data)) as im:
                fmt, size = im.format, im.size
        except UnidentifiedImageError:
            raise RenderReject("image_unreadable", f"{path}: not an image format Pillow can identify") from None
        except (OSError, ValueError) as e:
            raise RenderReject("image_unreadable", f"{path}: {e}") from None
        if fmt not in IMAGE_FORMATS or min(size) <= 0:
            raise RenderReject("image_unreadable", f"{path}: format {fmt} size {size}")
        return LoadedImage(data=data, sha256=hashlib.sha256(data).hexdigest(), name=path.name)


@dataclass
class RowBuilder:
    """Turns one record into one shard row (with the hidden columns the shuffle needs)."""

    pretrain: Template
    sft: Template
    policy: HintPolicy
    images: ImageLoader
    seed: int = 0
    validation_fraction: float = 0.0
    fits: dict[str, LengthRule] = field(default_factory=dict)
    """Per subset, how long a row may be (`lengths.length_rules`); none: rows are not measured."""
    shortened: int = 0
    """Rows whose trailing turns were dropped to fit."""

    def build(self, record: Record, loc: str, order: int) -> dict[str, Any]:
        _check_field_types(record)
        subset, template = ("pretrain", self.pretrain) if record.task == "caption" else ("sft", self.sft)
        self._check_image_fits(record, template)
        try:
            pairs = [("", caption_of(record))] if subset == "pretrain" else instruction_pairs(record, self.policy)
        except InstructionError as e:
            raise RenderReject(e.reason, e.detail) from None
        images = [self.images.load(ref) for ref in images_of(record)]
        slot = image_placement(record) == "slot"
        turns = render_turns(template, pairs, image=slot)
        turns, pairs, images, tokens = self._fit(subset, turns, pairs, images)
        split_key = images[0].sha256 if images else record.id
        return {
            "id": record.id, "source": record.source, "task": record.task, "lang": record.lang,
            "stage": subset, "template": template.name,  # the subset column is named `stage` (templates.rows)
            "turns": turns,
            "messages": sharegpt_messages(pairs, slot),
            "messages_en": _plain_messages(record.messages_en),
            "image": {"bytes": images[0].data, "path": images[0].name} if len(images) == 1 else None,
            "images": [{"bytes": im.data, "path": im.name} for im in images] if len(images) > 1 else None,
            "lineage": lineage_of(record, images),
            "meta": json.dumps(record.meta, ensure_ascii=False, sort_keys=True, default=str),
            KEY: seeded_hash(self.seed, "shuffle", record.id),
            SEL: seeded_hash(self.seed, "mix", record.id),
            SPLIT: self.split_of(split_key),
            MIX: subset == "sft" and not images,
            ORDER: order, LOC: loc, LEN: tokens,
        }

    def _fit(self, subset: str, turns: list, pairs: list, images: list) -> tuple[list, list, list, int | None]:
        """The row's whole leading turns that fit its stage's max_length (with the images their prompts
        hold) and its tokens; RenderReject `too_long` when not even the first turn fits."""
        rule = self.fits.get(subset)
        if rule is None:
            return turns, pairs, images, None
        kept, tokens, whole = rule.fit(turns, len(images))
        if kept == 0:
            raise RenderReject("too_long", f"{whole} tokens, and its first turn alone does not fit max_length "
                               f"{rule.max_length} (stages' max_length for {subset}; {rule.num_image_tokens} tokens "
                               "per image)", {"tokens": whole, "max_length": rule.max_length, "turns": len(turns),
                                              "images": len(images), "image_tokens": rule.num_image_tokens})
        if kept < len(turns):
            self.shortened += 1
            turns, pairs = turns[:kept], pairs[:kept]
            images = images[:sum(count_image_blocks(t["prompt"]) for t in turns)]
        return turns, pairs, images, tokens

    def split_of(self, key: str) -> str:
        return "validation" if seeded_hash(self.seed, "split", key) < self.validation_fraction * 2**64 else "train"

    @staticmethod
    def _check_image_fits(record: Record, template: Template) -> None:
        images = images_of(record)
        if record.task == "text" and images:
            raise RenderReject("image_on_text_record", f"task 'text' with image {record.image}")
        if record.task != "text" and not images:
            raise RenderReject("missing_image", f"task {record.task!r} without an image")
        if record.task == "caption" and len(images) > 1:
            raise RenderReject("image_count_mismatch", f"a caption record with {len(images)} images")
        if images and not template.supports_image:
            raise RenderReject("template_has_no_image_slot", f"template {template.name!r} cannot place an image")


ORIGINAL_ID_KEYS = ("original_id", "question_id", "annotation_id", "id", "image_id")
"""Where readers keep the source's own id in `meta` (LLaVA, VQA-style, COCO, URL lists); first found wins."""


def lineage_of(record: Record, images: list[LoadedImage]) -> dict[str, str | None]:
    """Where a row came from: the source's id, the image URL download fetched (``meta.image_url``,
    else the record's reference(s)), and translation's model, prompt version and QA verdicts."""
    meta, tr = record.meta, record.translation or {}
    qa = tr.get("qa")
    refs = images_of(record)
    values = {
        "original_id": next((meta[k] for k in ORIGINAL_ID_KEYS if meta.get(k) is not None), None),
        "image_url": _joined(meta.get("image_url", meta.get("url", refs or None))),
        "image_sha256": ",".join(im.sha256 for im in images) if images else None,
        "translator_model": tr.get("model"),
        "prompt_version": tr.get("prompt_version"),
        "qa": json.dumps(qa, ensure_ascii=False, sort_keys=True, default=str) if qa is not None else None,
    }
    return {k: (None if values[k] is None else str(values[k])) for k in LINEAGE_FIELDS}


def _joined(value: object) -> object:
    """A multi-image record's URLs (a list: download's `meta.image_url`) comma-separated, in order."""
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _check_field_types(record: Record) -> None:
    """Fields the Arrow row needs as strings; a wrong type here would fail a whole spill batch later."""
    for name in ("id", "source", "lang"):
        if not isinstance(getattr(record, name), str):
            raise TypeError(f"{name} must be a string, got {type(getattr(record, name)).__name__}")
    refs = record.image if isinstance(record.image, list) else [record.image]
    if record.image is not None and not (refs and all(isinstance(r, str) for r in refs)):
        raise TypeError(f"image must be a string reference or a list of them, got {record.image!r:.80}")


def _plain_messages(messages: list[dict] | None) -> list[dict] | None:
    if messages is None:
        return None
    out = [{"role": m.get("role"), "content": m.get("content")} for m in messages]
    if not all(isinstance(m["role"], str) and isinstance(m["content"], str) for m in out):
        raise TypeError("messages_en: every message needs a string role and content")
    return out


def spill_rows(
    records: Iterator[tuple[Record, str]], builder: RowBuilder, rejects: RejectWriter, spill: BucketSpill,
    order_base: int = 0,
) -> int:
    """Build every record's row into the spill; returns how many rows were spilled."""
    n = 0
    for order, (record, loc) in enumerate(records, start=order_base):
        try:
            row = builder.build(record, loc, order)
        except RenderReject as e:
            rejects.reject(source=record.source, reason=e.reason, detail=e.detail, record_id=record.id, location=loc,
                           record=e.figures)
            continue
        except (TypeError, AttributeError, KeyError) as e:  # malformed fields inside a record
            rejects.reject(source=record.source, reason="bad_record", detail=repr(e)[:300], record_id=record.id,
                           location=loc)
            continue
        spill.add(row, sum(len(im["bytes"]) for im in row["images"] or [row["image"]] if im) + 1024)
        n += 1
    return n


@dataclass(frozen=True)
class SpillJob:
    """One unit of parallel work: build and spill the rows of one input file."""

    cfg: Any  # RenderConfig
    in_dir: Path
    work: Path
    index: int
    path: Path
    buckets: int
    templates: tuple[str, str] = ("none", "visualcla")
    """(pretrain, sft) template names, `auto` resolved."""
    fits: tuple[tuple[str, LengthRule], ...] = ()


def make_builder(job: SpillJob) -> RowBuilder:
    cfg = job.cfg
    return RowBuilder(
        pretrain=get_template(job.templates[0]), sft=get_template(job.templates[1]),
        policy=HintPolicy(cfg.vqa_hint, cfg.vqa_hint_max_chars), images=ImageLoader(job.in_dir),
        seed=cfg.seed, validation_fraction=cfg.validation_fraction, fits=dict(job.fits),
    )


def resolved_templates(recipe: Any) -> dict[str, str]:
    """{subset: template name} of the recipe's render section, `auto` resolved by the LLM's architecture."""
    cfg = recipe.render
    names = {"pretrain": cfg.pretrain_template, "sft": cfg.sft_template}
    if AUTO in names.values():
        from training.build import stage_template

        names = {k: stage_template(recipe.model, v) for k, v in names.items()}
    return names


def spill_part(job: SpillJob) -> tuple[list[tuple[Path, int, int]], dict[str, Any]]:
    """Rows of one input file into its own bucket set; rejections into its own file.

    The input position of a row is (file index, line) packed into one integer, so the merged
    buckets sort exactly as a sequential pass would have, whichever worker ran which file."""
    stats = StepStats(step=STEP_NAME)
    name = f"part-{job.index:05d}"
    with RejectWriter(job.work / "rejected", STEP_NAME, stats, name=name) as rejects:
        spill = BucketSpill(job.work / "spill" / name, SPILL_SCHEMA, job.buckets)
        builder = make_builder(job)
        with bar(count_lines(job.path), f"render {job.path.stem}") as pb:
            spill_rows(counted(read_records([job.path], rejects), pb), builder, rejects, spill, order_base=job.index << 32)
        stats.extra["shortened_too_long"] += builder.shortened
        return spill.close(), stats.to_dict()


def merge_parts(parts: list[list[tuple[Path, int, int]]], folder: Path) -> list[tuple[Path, int, int]]:
    """Concatenate each bucket of every part (in part order) into one bucket file, in key order."""
    by_range: dict[tuple[int, int], list[Path]] = {}
    for part in parts:
        for path, lo, hi in part:
            by_range.setdefault((lo, hi), []).append(path)
    merged = []
    for i, ((lo, hi), paths) in enumerate(sorted(by_range.items())):
        target = folder / f"bucket-{i:05d}.arrow"
        with storage_guard(target), pa.ipc.new_file(str(target), SPILL_SCHEMA) as writer:
            for path in paths:  # a plain file, not a memory map: copied pages would count as RSS
                with pa.OSFile(str(path), "rb") as f:
                    reader = pa.ipc.open_file(f)
                    for b in range(reader.num_record_batches):
                        writer.write_batch(reader.get_batch(b))
                path.unlink()
        merged.append((target, lo, hi))
    return merged


def _serial_map(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [fn(item) for item in items]


# ---- 4. mixing plan --------------------------------------------------------------------------

@dataclass
class MixPlan:
    """Per split: multimodal sft rows, text rows available, and the cutoff on the mix hash."""

    ratio: float
    multimodal: Counter = field(default_factory=Counter)
    text: Counter = field(default_factory=Counter)
    cutoff: dict[str, int | None] = field(default_factory=dict)
    """Keep a text row iff its mix hash < cutoff; None keeps all."""

    def target(self, split: str) -> int:
        return min(self.text[split], math.floor(self.ratio * self.multimodal[split] + 0.5))


def plan_mix(buckets: list[Path], ratio: float) -> MixPlan:
    """Count distinct rows per split, then find the text cutoffs with a 16-bit histogram pass
    and one more pass over the boundary bin: exact counts without holding every hash."""
    plan = MixPlan(ratio=ratio)
    hist = {s: np.zeros(1 << 16, dtype=np.int64) for s in SPLITS}
    for path in buckets:
        t = _distinct(path)
        for split in SPLITS:
            in_split = pc.equal(t[SPLIT], split)
            multimodal = pc.and_(pc.equal(t["stage"], "sft"), pc.invert(t[MIX]))
            plan.multimodal[split] += pc.sum(pc.and_(in_split, multimodal)).as_py() or 0
            sel = t.filter(pc.and_(in_split, t[MIX]))[SEL].to_numpy()
            plan.text[split] += len(sel)
            hist[split] += np.bincount(sel >> 48, minlength=1 << 16)
    for split in SPLITS:
        plan.cutoff[split] = _cutoff(buckets, split, hist[split], plan.target(split), plan.text[split])
    return plan


def _distinct(path: Path) -> pa.Table:
    t = sorted_bucket(path, ["id", "stage", SEL, SPLIT, MIX])
    return t.filter(pa.array(first_of_each_id(t)))


def _cutoff(buckets: list[Path], split: str, hist: np.ndarray, k: int, available: int) -> int | None:
    if k >= available:
        return None
    below = np.concatenate([[0], np.cumsum(hist)])
    b = int(np.searchsorted(below, k, side="right")) - 1  # bin holding the k-th smallest hash
    need = k - int(below[b])
    if need == 0:
        return b << 48
    boundary = []
    for path in buckets:
        t = _distinct(path)
        sel = t.filter(pc.and_(pc.equal(t[SPLIT], split), t[MIX]))[SEL].to_numpy()
        boundary.append(sel[(sel >> 48) == b])
    return int(np.sort(np.concatenate(boundary))[need])


# ---- 5. write --------------------------------------------------------------------------------

def write_shards(
    buckets: list[Path], plan: MixPlan, rejects: RejectWriter, writers: dict[tuple[str, str], ShardWriter],
    hists: dict[str, np.ndarray] | None = None,
) -> Counter:
    """Stream buckets into the writers; returns row counts per (subset, split, source, task). `hists`:
    per subset, a histogram the measured token lengths of the written rows are added to."""
    counts: Counter = Counter()
    for path in buckets:
        pa.default_memory_pool().release_unused()  # hand the last bucket's memory back: flat peak RSS
        full = read_bucket(path)
        order = sort_order(full)
        t = full.drop_columns(IMAGE_COLUMNS).take(order)  # everything but the image bytes, sorted
        first = first_of_each_id(t)
        _reject_duplicates(t, first, rejects)
        over = first & _over_ratio(t, plan)
        _reject_rows(t.filter(pa.array(over)), rejects, "mix_ratio", "text-only row beyond text_per_multimodal")
        keep = first & ~over
        subsets, splits = t["stage"].to_numpy(zero_copy_only=False), t[SPLIT].to_numpy(zero_copy_only=False)
        _add_lengths(hists or {}, t, keep, subsets)
        for (subset, split), writer in writers.items():
            part = full.take(order.filter(pa.array(keep & (subsets == subset) & (splits == split))))
            writer.write(part)
            for row in part.group_by(["source", "task"]).aggregate([("id", "count")]).to_pylist():
                counts[(subset, split, row["source"], row["task"])] += row["id_count"]
                rejects.stats.count_kept(row["source"], row["id_count"])
    return counts


def _add_lengths(hists: dict[str, np.ndarray], t: pa.Table, keep: np.ndarray, subsets: np.ndarray) -> None:
    lengths = pc.fill_null(t[LEN], -1).to_numpy()
    for subset, hist in hists.items():
        mine = lengths[keep & (subsets == subset) & (lengths >= 0)]
        hist += histogram(mine, len(hist))


def _over_ratio(t: pa.Table, plan: MixPlan) -> np.ndarray:
    """Mask of text-only rows whose mix hash is past their split's cutoff."""
    mix, sel = t[MIX].to_numpy(zero_copy_only=False), t[SEL].to_numpy()
    splits = t[SPLIT].to_numpy(zero_copy_only=False)
    over = np.zeros(len(t), dtype=bool)
    for split, cutoff in plan.cutoff.items():
        if cutoff is not None:
            over |= mix & (splits == split) & (sel >= np.uint64(cutoff))
    return over


def _reject_duplicates(t: pa.Table, first: np.ndarray, rejects: RejectWriter) -> None:
    if first.all():
        return
    idx = np.arange(len(first))
    kept_at = np.maximum.accumulate(np.where(first, idx, 0))
    locs = t[LOC].to_pylist()
    for i in idx[~first]:
        rejects.reject(source=t["source"][i].as_py(), reason="duplicate_id", record_id=t["id"][i].as_py(),
                       detail=f"same id as {locs[kept_at[i]]}", location=locs[i])


def _reject_rows(t: pa.Table, rejects: RejectWriter, reason: str, detail: str) -> None:
    for row in t.select(["source", "id", LOC]).to_pylist():
        rejects.reject(source=row["source"], reason=reason, detail=detail, record_id=row["id"], location=row[LOC])


# ---- the step --------------------------------------------------------------------------------

def estimate_buckets(files: list[Path], images: ImageLoader, bucket_bytes: int, sample: int = 64) -> int:
    """How many spill buckets keep each near `bucket_bytes`, from line and image sizes of a sample."""
    total = 0.0
    for path in files:
        sizes, lines = [], []
        with open(path, "rb") as f:
            for raw in f:
                if len(lines) >= sample:
                    break
                lines.append(len(raw))
                try:
                    ref = json.loads(raw).get("image")
                    refs = ref if isinstance(ref, list) else [ref] if ref else []
                    sizes.append(sum(images.resolve(r).stat().st_size for r in refs))
                except (ValueError, OSError, AttributeError, TypeError, RenderReject):
                    sizes.append(0)
        if lines:
            rows = path.stat().st_size / (sum(lines) / len(lines))
            total += rows * (2 * sum(lines) / len(lines) + sum(sizes) / len(sizes))
    return max(1, min(MAX_BUCKETS, math.ceil(total / bucket_bytes)))


def run_render(recipe: Any, in_dir: Path, out_dir: Path, mapper: Mapper = _serial_map) -> StepStats:
    """Render `in_dir/records/*.jsonl` into the shard set `out_dir`; a finished `out_dir` is kept.

    `mapper(fn, items)` runs the per-file row building; the flows pass one that submits Prefect
    tasks to the recipe's task runner (threads, Dask, Ray). The output is the same either way.
    A full disk or a permission error stops the step with a message naming the path."""
    with step_storage_errors(STEP_NAME, out_dir):
        return _render(recipe, Path(in_dir), Path(out_dir), mapper)


def _render(recipe: Any, in_dir: Path, out_dir: Path, mapper: Mapper) -> StepStats:
    if is_done(out_dir):
        return StepStats.from_dict(read_json(out_dir / "stats.json"))
    cfg = recipe.render
    files = sorted((in_dir / "records").glob("*.jsonl"))
    if not files:
        raise StepFailed(f"{STEP_NAME}: {in_dir / 'records'}: no *.jsonl records to render; "
                          "run `vcla translate` first")
    work = out_dir / "_work"
    for stale in (work, out_dir / "data"):
        remove_tree(stale)
    clean_stale_temp_files(out_dir)
    stats = StepStats(step=STEP_NAME)
    bucket_bytes = cfg.bucket_mb << 20
    n_buckets = estimate_buckets(files, ImageLoader(in_dir), bucket_bytes)
    templates = resolved_templates(recipe)
    rules, unmeasured = length_rules(recipe, templates)
    jobs = [SpillJob(cfg, in_dir, work, i, path, n_buckets, (templates["pretrain"], templates["sft"]),
                     tuple(sorted(rules.items()))) for i, path in enumerate(files)]
    results = mapper(spill_part, jobs)
    with RejectWriter(out_dir / "rejected", STEP_NAME, stats) as rejects:
        for job, (_, part_stats) in zip(jobs, results):
            stats.merge(StepStats.from_dict(part_stats))
            rejects.copy_from(work / "rejected" / f"part-{job.index:05d}.jsonl")
        buckets = list(bucket_files(merge_parts([parts for parts, _ in results], work / "spill"), 2 * bucket_bytes))
        plan = plan_mix(buckets, cfg.text_per_multimodal)
        writers = _writers(work / "shards", cfg)
        hists = {subset: np.zeros(rule.max_length + 2, dtype=np.int64) for subset, rule in rules.items()}
        counts = write_shards(buckets, plan, rejects, writers, hists)
    staged = {key: finalize(w.close(), work / "data" / key[0] / key[1], f"{key[0]}-{key[1]}")
              for key, w in writers.items()}
    shards = move_into_place(staged, work / "data", out_dir / "data")
    _count_extra(stats, counts, plan, shards)
    lengths = token_lengths(rules, hists, unmeasured)
    write_card_files(out_dir, recipe, shards, counts, stats, templates, lengths)
    write_json(out_dir / "stats.json", stats.to_dict())
    remove_tree(work)
    mark_done(out_dir, {"shards": sum(len(v) for v in shards.values())})
    print(stats.table())
    print(length_line(stats, unmeasured))
    return stats


def token_lengths(rules: dict[str, LengthRule], hists: dict[str, np.ndarray], unmeasured: str | None) -> dict:
    """The manifest's `token_lengths`: per subset, percentiles of the written rows' tokens."""
    if unmeasured:
        return {"checked": False, "why": unmeasured}
    return {"checked": True, **{subset: summary(hists[subset], rule.max_length) for subset, rule in rules.items()}}


def length_line(stats: StepStats, unmeasured: str | None) -> str:
    if unmeasured:
        return f"[render] token lengths not checked: {unmeasured}"
    return (f"[render] fitted to the stages' max_length: {stats.extra['shortened_too_long']} row(s) shortened "
            f"(trailing turns dropped), {stats.rejected['too_long']} rejected as too_long (rejected/)")


def move_into_place(
    staged: dict[tuple, list[ShardFile]], staged_root: Path, final_root: Path
) -> dict[tuple, list[ShardFile]]:
    """Make the whole shard set visible at once: one rename of its folder, so a reader of
    `data/` finds every shard or none (never the sets a killed run had finished)."""
    if staged_root.is_dir():
        rename_into_place(staged_root, final_root)
    return {key: [replace(f, path=final_root / f.path.relative_to(staged_root)) for f in files]
            for key, files in staged.items()}


def _writers(folder: Path, cfg: Any) -> dict[tuple[str, str], ShardWriter]:
    return {
        (subset, split): ShardWriter(
            folder, f"{subset}-{split}", ROW_SCHEMA, shard_bytes=cfg.shard_size_mb << 20,
            row_group_rows=cfg.row_group_rows, row_group_bytes=min(64 << 20, cfg.shard_size_mb << 20),
        )
        for subset in SUBSETS for split in SPLITS
    }


def _count_extra(stats: StepStats, counts: Counter, plan: MixPlan, shards: dict[tuple, list[ShardFile]]) -> None:
    for (subset, split, _source, task), n in counts.items():
        stats.extra[f"rows_{subset}_{split}"] += n
        stats.extra[f"rows_{subset}_{task}"] += n
    for split in SPLITS:
        stats.extra[f"sft_multimodal_{split}"] = plan.multimodal[split]
    stats.extra["shards"] = sum(len(v) for v in shards.values())
    stats.extra["shard_bytes"] = sum(f.bytes for v in shards.values() for f in v)
