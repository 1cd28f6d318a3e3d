"""What every reader shares: the `Item` a reader yields, roles, ids and image references."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from common.image_refs import ImageRefError, check_scheme, is_url
from pipelines.recipe import SourceConfig
from templates.schema import IMAGE_PLACEHOLDER, Message, Record

MAX_NESTING = 64
"""Deepest nesting of lists/objects an item may have. Real datasets nest 3-6 levels; a deeper
item is rejected (`too_deeply_nested`) before anything recurses into it (copying, printing
or serialising a ~1000-level item raises RecursionError)."""

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
"""Source role names we accept (LLaVA's human/gpt and the chat user/assistant)."""


@dataclass(slots=True)
class Item:
    """One thing a reader found at `location`: a record, or why none could be made."""

    location: str
    record: Record | None = None
    reason: str | None = None
    detail: str = ""
    raw: Any = None

    @classmethod
    def bad(cls, location: str, reason: str, detail: str, raw: Any = None) -> "Item":
        return cls(location=location, reason=reason, detail=detail, raw=raw)


class MissingField(KeyError):
    """Raised inside a reader's `parse` helper; the reader turns it into a `missing_field` item."""

    def __str__(self) -> str:
        return str(self.args[0])


def need(row: dict[str, Any], key: str, types: type | tuple[type, ...] = str) -> Any:
    """row[key], or MissingField if it is absent, null or of the wrong type."""
    if not isinstance(row, dict):
        raise MissingField(f"expected a JSON object, got {type(row).__name__}")
    value = row.get(key)
    if value is None:
        raise MissingField(f"field {key!r} is missing")
    if not isinstance(value, types):
        raise MissingField(f"field {key!r} is a {type(value).__name__}, expected {_type_names(types)}")
    return value


def _type_names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def content_id(*parts: Any) -> str:
    """An original id for sources that have none (Alpaca, URL lists): a hash of the content."""
    text = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def qa_messages(question: str, answer: str) -> list[Message]:
    """A one-turn image question: `<image>` first, as LLaVA puts it."""
    return [
        {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"},
        {"role": "assistant", "content": answer},
    ]


def caption_messages(caption: str) -> list[Message]:
    """An image-caption pair: the user turn is the image alone (stage-1 pre-training)."""
    return [{"role": "user", "content": IMAGE_PLACEHOLDER}, {"role": "assistant", "content": caption}]


def majority_answer(answers: list[str], preferred: str | None = None) -> str:
    """The most frequent answer; ties go to `preferred` (VQAv2's multiple_choice_answer), then
    to the answer seen first."""
    counts = Counter(answers)
    best = max(counts.values())
    tied = [a for a in counts if counts[a] == best]  # Counter keeps first-seen order
    return preferred if preferred in tied else tied[0]


def resolve_image(cfg: SourceConfig, ref: str | None = None, template: str | None = None, **fields: Any) -> str:
    """Turn a source's image reference into a URL or a local path.

    `ref` is the file name or URL the source gives, if any. A template (`template`, else
    `cfg.image_template`) rewrites it: it is formatted with `fields` (e.g. image_id) and
    `image` (= ref), so "COCO_train2014_{image}" turns LLaVA's "000000033471.jpg" into the
    2014 file name. Relative names resolve against `cfg.image_root`, a folder or a URL prefix.
    Raises ValueError (template problems) with a message naming the template."""
    template = template if template is not None else cfg.image_template
    if template is not None:
        ref = format_template(template, fields if ref is None else {**fields, "image": ref})
    elif ref is None:
        raise ValueError(f"source {cfg.name!r}: no image reference and no image_template to build one")
    if is_url(ref) or os.path.isabs(ref) or cfg.image_root is None:
        return ref  # the download stage's policy decides (and rejects other schemes with the record)
    check_scheme(ref)  # "javascript:x" joined to image_root would become a plausible local file name
    if is_url(cfg.image_root):
        return urljoin(cfg.image_root.rstrip("/") + "/", ref)
    return str(Path(cfg.image_root) / ref)


class _Text(str):
    """A string field that also takes integer format specs when it is all digits:
    "{image_id:06d}" works for GQA's "2354786", while "{image_id}" keeps "000123" as is."""

    def __format__(self, spec: str) -> str:
        if spec and spec[-1] in "dxXob" and self.isdigit():
            return format(int(self), spec)
        return super().__format__(spec)


def format_template(template: str, fields: dict[str, Any]) -> str:
    """`template.format(**fields)`; digit-only strings accept integer specs ({image_id:06d})."""
    values = {k: _Text(v) if isinstance(v, str) else v for k, v in fields.items()}
    try:
        return template.format(**values)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"image_template {template!r} cannot be formatted with {fields}: {err!r} "
            f"(available fields: {sorted(fields)})"
        ) from None


def pick_template(cfg: SourceConfig, candidates: list[str], fields: dict[str, Any]) -> str:
    """The first candidate naming an existing file under a local `image_root`, else the first.

    Used only when the recipe gives no `image_template`: it lets one reader accept both the
    official file names (COCO_train2014_000000000009.jpg) and plain ones (000009.jpg)."""
    if cfg.image_root and not is_url(cfg.image_root):
        for template in candidates:
            try:
                name = format_template(template, fields)
            except ValueError:
                continue
            if (Path(cfg.image_root) / name).is_file():
                return template
    return candidates[0]


def source_lang(cfg: SourceConfig, default: str = "en") -> str:
    """cfg.lang if the recipe set it, else the kind's default (zh_pairs: "zh")."""
    return cfg.lang if "lang" in cfg.model_fields_set else default


def to_messages(turns: Any, role_key: str, text_key: str) -> tuple[list[Message], str | None]:
    """Source turns -> our messages, plus a leading system prompt if there is one.

    Known roles are mapped (human -> user, gpt -> assistant); an unknown role is kept as
    it is so that validation rejects the record as `unknown_role` with the turn's index.
    Raises MissingField when `turns` is not a list of objects with both keys."""
    if not isinstance(turns, list):
        raise MissingField(f"turns must be a list, got {type(turns).__name__}")
    system = None
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        role = need(turn, role_key)
        text = turn.get(text_key)
        if not isinstance(text, str):
            raise MissingField(f"turn {i}: field {text_key!r} is missing or not text")
        if role == "system" and i == 0:
            system = text
            continue
        messages.append({"role": ROLES.get(role, role), "content": text})  # type: ignore[typeddict-item]
    return messages, system


class TooManyImages(ValueError):
    """The item has more images than a record may carry (`MAX_IMAGES`)."""


MAX_IMAGES = 16
"""Images one record may carry (LLaVA-Interleave items have a few; Ziya-Visual's story three)."""


def source_images(value: Any) -> str | list[str] | None:
    """A source's `image` field (a string, a list of strings, or absent) -> the record's `image`: one
    reference, a list for several (LLaVA-Interleave's layout), None. Raises TooManyImages past MAX_IMAGES."""
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        if len(value) > MAX_IMAGES:
            raise TooManyImages(f"{len(value)} images; a record carries at most {MAX_IMAGES}")
        return value[0] if len(value) == 1 else list(value)
    raise MissingField(f"image must be a string or a list of non-empty strings, got {value!r:.80}")


def resolve_images(cfg: SourceConfig, refs: str | list[str] | None) -> str | list[str] | None:
    """`resolve_image` for each reference of `source_images`' result."""
    if refs is None:
        return None
    return [resolve_image(cfg, r) for r in refs] if isinstance(refs, list) else resolve_image(cfg, refs)


def too_deep(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether lists/dicts in `value` nest more than `limit` levels (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (list, dict)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def deep_item(location: str, *values: Any) -> Item | None:
    """A `too_deeply_nested` rejection if any of `values` nests too deeply (raw not kept), else None."""
    if any(too_deep(v) for v in values):
        return Item.bad(location, "too_deeply_nested", f"lists/objects nest more than {MAX_NESTING} levels deep")
    return None


def to_item(location: str, row: Any, build: Callable[[], Record]) -> Item:
    """The record `build()` makes of `row`, or the rejection its error names; never raises on data."""
    deep = deep_item(location, row)
    if deep is not None:
        return deep
    try:
        return Item(location=location, record=build())
    except MissingField as err:
        return Item.bad(location, "missing_field", str(err), raw=row)
    except TooManyImages as err:
        return Item.bad(location, "too_many_images", str(err), raw=row)
    except ImageRefError as err:
        return Item.bad(location, err.reason, str(err), raw=row)
    except ValueError as err:
        return Item.bad(location, "image_template_error", str(err), raw=row)
