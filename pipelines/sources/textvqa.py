"""TextVQA (and OCR-VQA converted to its layout): questions about text in the image.

    {"dataset_name": "textvqa", ..., "data": [{question_id, question, image_id, answers: [10 x str],
      flickr_original_url, image_classes, set_name, ...}]}

Records are `task="vqa"` with `meta.kind="ocr"`, so rendering can mix or weigh them apart.
The majority answer is kept, all answers go to `meta`. Images: `image_template` (default
"{image_id}.jpg") under `image_root`; with no `image_root` and no template, the row's
`flickr_original_url`.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipelines.recipe import SourceConfig
from pipelines.sources.common import (
    Item,
    MissingField,
    majority_answer,
    need,
    qa_messages,
    resolve_image,
    source_lang,
    to_item,
)
from pipelines.sources.jsonstream import JsonStreamError, iter_json_array
from templates.schema import Record, make_id

DEFAULT_TEMPLATE = "{image_id}.jpg"


def read_textvqa(cfg: SourceConfig) -> Iterator[Item]:
    try:
        for index, row in iter_json_array(cfg.path, key="data"):
            location = f"{cfg.path}[{index}]"
            yield to_item(location, row, lambda: make_record(cfg, row))
    except JsonStreamError as err:
        yield Item.bad(err.location, "invalid_json", err.reason)


def make_record(cfg: SourceConfig, row: dict) -> Record:
    image_id = need(row, "image_id", (str, int))
    answers = [a for a in need(row, "answers", list) if isinstance(a, str)]
    if not answers:
        raise MissingField("field 'answers' has no text answers")
    url = row.get("flickr_original_url")
    if cfg.image_root is None and cfg.image_template is None and isinstance(url, str) and url:
        image = url
    else:
        image = resolve_image(cfg, template=cfg.image_template or DEFAULT_TEMPLATE, image_id=image_id)
    return Record(
        id=make_id(cfg.name, need(row, "question_id", (int, str))),
        source=cfg.name,
        task="vqa",
        messages=qa_messages(need(row, "question"), majority_answer(answers)),
        image=image,
        lang=source_lang(cfg),
        meta={
            "kind": "ocr",
            "question_id": row["question_id"],
            "image_id": image_id,
            "answers": answers,
            "image_classes": row.get("image_classes"),
            "set_name": row.get("set_name"),
            **({"ocr_tokens": tokens} if (tokens := _ocr_tokens(row)) else {}),
        },
    )


def _ocr_tokens(row: dict) -> list[str]:
    """The image's OCR tokens where the file has them (`ocr_tokens`, as TextVQA 0.5.1 and the
    Rosetta-joined files carry them): the generate step gives them to the model as context."""
    tokens = row.get("ocr_tokens")
    return [t for t in tokens if isinstance(t, str) and t.strip()] if isinstance(tokens, list) else []
