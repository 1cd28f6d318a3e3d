"""What the generate step knows about each image, gathered from the download step's records and
the recipe's COCO instance files.

    contexts = collect_contexts(recipe, in_dir / "records", rejects)   # image file -> Context

Per image (the local file every record of it points at, so an image shared by a caption source
and a VQA source is one context): captions (caption records), QA (VQA records; TextVQA's OCR
tokens from `meta`), and boxes from each `generate.boxes` file, joined by `meta.image_id`, else by
the file name of the image's URL. Held-out images (those of the recipe's `eval.split`) get no
context: the evaluation must not get easier by leakage. A multi-image record (`image` a list) gives no
context: its text is about several images at once, so it cannot be split into one image's captions or QA;
it is counted (`multi_image_records_skipped`) and passes through the step unchanged, and its images get
contexts from their one-image records.

Memory: one `Context` per image; for tens of millions of images, split the run by source.
"""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image

from common.image_refs import ImageRefError, parse_image_ref
from generators.context import Context
from pipelines.core.rejects import RejectWriter
from pipelines.recipe import Recipe
from pipelines.sources.coco_instances import base_name, read_coco_instances
from templates.schema import IMAGE_PLACEHOLDER, Record

STEP_NAME = "generate"


def iter_records(folder: Path) -> Iterator[tuple[str, Record]]:
    """(location, record) of every readable row of `folder/*.jsonl` (bad rows are the upstream's
    concern: it wrote them; they are skipped here and passed through as they are)."""
    for path in sorted(folder.glob("*.jsonl")):
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        yield f"{path.name}:{lineno}", Record.from_dict(json.loads(line))
                    except (ValueError, TypeError):
                        continue


def collect_contexts(recipe: Recipe, records_dir: Path, rejects: RejectWriter | None,
                     counts: Counter | None = None) -> tuple[dict[str, Context], int]:
    """(image file -> Context for the images with any annotation, number of held-out images skipped).
    Problems of the box files go to `rejects` (not recorded when None: an estimate); multi-image records
    skipped are counted in `counts["multi_image_records_skipped"]` when given."""
    cfg = recipe.generate
    assert cfg is not None
    wanted = set(cfg.context_sources) if cfg.context_sources is not None else None
    heldout = heldout_images(recipe)
    contexts: dict[str, Context] = {}
    join_keys: dict[str, list[tuple[str, int | None, str | None]]] = {}  # image -> (source, image_id, file name)
    skipped: set[str] = set()
    for _, record in iter_records(records_dir):
        if record.image is None or record.source == cfg.source_name:
            continue
        if isinstance(record.image, list):
            if counts is not None:
                counts["multi_image_records_skipped"] += 1
            continue
        url = record.meta.get("image_url")
        if _local_path(url) in heldout:
            skipped.add(record.image)
            continue
        key = (record.source, record.meta.get("image_id"), base_name(urlsplit(url).path) if isinstance(url, str) else None)
        keys = join_keys.setdefault(record.image, [])
        if key not in keys:
            keys.append(key)
        if wanted is not None and record.source not in wanted:
            continue
        ctx = contexts.setdefault(record.image, Context(record.image))
        ctx.image_sha256 = ctx.image_sha256 or (record.meta.get("image_download") or {}).get("sha256")
        _add(ctx, record)
    _join_boxes(recipe, contexts, join_keys, rejects)
    return {k: c for k, c in contexts.items() if not c.is_empty()}, len(skipped)


def _add(ctx: Context, record: Record) -> None:
    answers = [m["content"] for m in record.messages if m["role"] == "assistant"]
    if record.task == "caption" and answers:
        ctx.captions.append(answers[0].strip())
    elif record.task == "vqa" and len(record.messages) >= 2:
        question = record.messages[0]["content"].replace(IMAGE_PLACEHOLDER, "").strip()
        ctx.qa.append((question, answers[0].strip()))
        tokens = record.meta.get("ocr_tokens")
        if isinstance(tokens, list):
            ctx.ocr.extend(str(t) for t in tokens)


def _join_boxes(recipe: Recipe, contexts: dict[str, Context], join_keys: dict, rejects: RejectWriter | None) -> None:
    for i, box_source in enumerate(recipe.generate.boxes):
        index = read_coco_instances(box_source.path)
        for location, reason, detail in index.problems if rejects is not None else ():
            rejects.reject(source=f"boxes[{i}]", reason=reason, detail=detail, location=location)
        covered = set(box_source.sources) if box_source.sources is not None else None
        for image, keys in join_keys.items():
            # the first of the image's records the file knows (a duplicate's record may name its own copy)
            found = next((f for source, image_id, file_name in keys if covered is None or source in covered
                          if (f := index.find(image_id if isinstance(image_id, int) else None, file_name))), None)
            if found is not None and found.boxes:
                contexts.setdefault(image, Context(image)).boxes.extend(found.boxes)


def heldout_images(recipe: Recipe) -> set[str]:
    """Resolved paths of the images of the recipe's eval split (none without one)."""
    split = recipe.eval.split
    if not split or not Path(split).is_file():
        return set()
    folder = Path(split).resolve().parent
    out = set()
    with open(split, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                image = json.loads(line).get("image")
                if isinstance(image, str):
                    for base in (folder, folder.parent):  # relative to the split, or to the corpus root
                        out.add(str((base / image).resolve()))
    return out


def _local_path(url: object) -> str | None:
    """The resolved file a record's image URL names (a path or file:// URL), None for others."""
    try:
        ref = parse_image_ref(url)  # type: ignore[arg-type]
    except ImageRefError:
        return None
    return str(Path(ref.path).resolve()) if ref.path else None


def image_data_url(path: str, max_side: int) -> str:
    """The image as a base64 JPEG data URL, its longest side at most `max_side`."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
