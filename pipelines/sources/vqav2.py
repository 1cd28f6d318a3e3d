"""VQAv2: a questions JSON and an annotations JSON, joined on question_id, both streamed.

    questions.json    {..., "data_subtype": "train2014", "questions": [{image_id, question, question_id}]}
    annotations.json  {..., "annotations": [{question_id, image_id, question_type, answer_type,
                        multiple_choice_answer, answers: [10 x {answer, answer_confidence, answer_id}]}]}

The official files list questions and annotations in the same order, so the join walks both
streams in lockstep; items that arrive out of order wait in a small buffer until their
partner shows up. The record keeps the majority answer; all ten answers go to `meta`.
Images: `image_template` if given, else the first of COCO's official name, a 12-digit and
a 6-digit name that exists under `image_root`.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import zip_longest
from typing import Any

from common.image_refs import ImageRefError
from pipelines.recipe import SourceConfig
from pipelines.sources.common import (
    Item,
    MissingField,
    deep_item,
    majority_answer,
    need,
    pick_template,
    qa_messages,
    resolve_image,
    source_lang,
    too_deep,
)
from pipelines.sources.jsonstream import JsonStreamError, iter_json_array
from templates.schema import Record, make_id

IMAGE_TEMPLATES = ["COCO_{data_subtype}_{image_id:012d}.jpg", "{image_id:012d}.jpg", "{image_id:06d}.jpg", "{image_id}.jpg"]


def read_vqav2(cfg: SourceConfig) -> Iterator[Item]:
    if cfg.annotations is None:
        raise ValueError(f"source {cfg.name!r} (vqav2): `annotations` (the annotations JSON) is required")
    header: dict[str, Any] = {}
    questions = iter_json_array(cfg.path, key="questions", header=header)
    annotations = iter_json_array(cfg.annotations, key="annotations")
    template = cfg.image_template
    for location, question, annotation in join_on_question_id(cfg, questions, annotations):
        if isinstance(question, Item):
            yield question
            continue
        try:
            if template is None:
                fields = {"image_id": need(question, "image_id", int), "data_subtype": _subtype(header)}
                template = pick_template(cfg, IMAGE_TEMPLATES, fields)
            yield Item(location=location, record=make_record(cfg, question, annotation, header, template))
        except MissingField as err:
            yield Item.bad(location, "missing_field", str(err), raw=question)
        except ImageRefError as err:
            yield Item.bad(location, err.reason, str(err), raw=question)
        except ValueError as err:
            yield Item.bad(location, "image_template_error", str(err), raw=question)


def join_on_question_id(
    cfg: SourceConfig, questions: Iterator[tuple[int, Any]], annotations: Iterator[tuple[int, Any]]
) -> Iterator[tuple[str, Any, Any]]:
    """(location, question, annotation) pairs matched on question_id.

    Bad items, and questions left without an annotation at the end, come out as
    `(location, Item.bad(...), None)`."""
    pending_q: dict[Any, tuple[str, Any]] = {}
    pending_a: dict[Any, Any] = {}
    try:
        for q, a in zip_longest(questions, annotations):
            if q is not None:
                location = f"{cfg.path}[{q[0]}]"
                qid = _question_id(q[1])
                bad = deep_item(location, q[1])
                if bad is not None or qid is None:
                    detail = "field 'question_id' is missing or not an integer/string"
                    yield location, bad or Item.bad(location, "missing_field", detail, raw=q[1]), None
                elif qid in pending_a:
                    yield location, q[1], pending_a.pop(qid)
                else:
                    pending_q[qid] = (location, q[1])
            qid = _question_id(a[1]) if a is not None and not too_deep(a[1]) else None
            if qid is not None:
                if qid in pending_q:
                    location, question = pending_q.pop(qid)
                    yield location, question, a[1]
                else:
                    pending_a[qid] = a[1]
    except JsonStreamError as err:
        yield err.location, Item.bad(err.location, "invalid_json", err.reason), None
    for location, question in pending_q.values():
        detail = f"no annotation with question_id {question.get('question_id')!r} in {cfg.annotations}"
        yield location, Item.bad(location, "missing_annotation", detail, raw=question), None


def _subtype(header: dict[str, Any]) -> str:
    """The questions file's `data_subtype` (e.g. "train2014") when it is text, else ""."""
    value = header.get("data_subtype")
    return value if isinstance(value, str) else ""


def _question_id(item: Any) -> int | str | None:
    """The item's question_id if it is one a join can use (an integer or a string), else None."""
    qid = item.get("question_id") if isinstance(item, dict) else None
    return qid if isinstance(qid, (int, str)) and not isinstance(qid, bool) else None


def make_record(cfg: SourceConfig, question: dict, annotation: dict, header: dict, template: str) -> Record:
    image_id = need(question, "image_id", int)
    answers = need(annotation, "answers", list)
    texts = [need(a, "answer") for a in answers]
    if not texts:
        raise MissingField("field 'answers' is empty")
    preferred = annotation.get("multiple_choice_answer")
    return Record(
        id=make_id(cfg.name, need(question, "question_id", (int, str))),
        source=cfg.name,
        task="vqa",
        messages=qa_messages(need(question, "question"), majority_answer(texts, preferred)),
        image=resolve_image(cfg, template=template, image_id=image_id, data_subtype=_subtype(header)),
        lang=source_lang(cfg),
        meta={
            "question_id": question["question_id"],
            "image_id": image_id,
            "question_type": annotation.get("question_type"),
            "answer_type": annotation.get("answer_type"),
            "multiple_choice_answer": preferred,
            "answers": answers,
        },
    )
