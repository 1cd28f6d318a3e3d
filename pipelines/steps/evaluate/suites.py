"""One evaluation suite on one stage checkpoint: read its file, ask the model (greedy, batched:
training/evaluate.py), score with evaluators/. A suite that cannot run (a missing file, an endpoint
that is down) raises `SuiteError` with the reason; the step reports it and goes on.

    vqa       JSONL {image, question, answer | answers, question_type?, answer_type?}: VQAv2 accuracy
              (min(#annotators / 3, 1) over the 9-of-10 subsets), exact match, by type
    caption   JSONL {image, references}: BLEU-4 and CIDEr-D (pycocoevalcap's scorers)
    choice    MMBench TSV: CircularEval (every rotation of the options right), by category
    describe  JSONL {image, question, shapes}: the demo's description check (pipelines/demo/describe.py)
    judge     JSONL {image, question, reference, context, category}: an LLM judge's relative score

In the JSONL suites `image` may be a list: a question about several images, each shown on a line before
the question, or at the question's `<image>` markers (training/evaluate.py `answer_batch`).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from evaluators.config import SuiteConfig

LONG_ANSWER_TOKENS = 96
"""Default `max_new_tokens` for captions, descriptions and judged answers (short answers: eval.max_new_tokens)."""


class SuiteError(RuntimeError):
    """The suite could not run; the message says why (recorded in the report, not raised further
    unless the suite is `required`)."""


def run_suite(name: str, cfg: SuiteConfig, bot: Any, recipe: Any) -> tuple[dict, list[dict]]:
    """(metrics, predictions) of suite `name` on the loaded checkpoint `bot`."""
    path = Path(cfg.path)
    if not path.is_file():
        raise SuiteError(f"eval.suites.{name}.path: file not found: {path}")
    runner = {"vqa": _vqa, "caption": _caption, "choice": _choice, "describe": _describe, "judge": _judge}[cfg.kind]
    try:
        return runner(cfg, path, bot, recipe)
    except (KeyError, ValueError, OSError) as e:
        raise SuiteError(f"eval.suites.{name} ({path}): {type(e).__name__}: {e}") from None


def _rows(path: Path, limit: int | None) -> list[dict]:
    from training.evaluate import read_split

    return read_split(path, limit)


def _images(path: Path, rows: list[dict]) -> list[Path | list[Path]]:
    """Each row's image file, or its list of files for a row about several images (`image` a list)."""
    from training.evaluate import split_image_path

    return [[split_image_path(path, ref) for ref in r["image"]] if isinstance(r["image"], list)
            else split_image_path(path, r["image"]) for r in rows]


def _answers(bot: Any, images: list, texts: list[str], cfg: SuiteConfig, recipe: Any, default: int,
             first_line: bool = False) -> list[str]:
    from training.evaluate import answer_all

    return answer_all(bot, images, texts, cfg.max_new_tokens or default, recipe.eval.batch_size, first_line)


def _vqa(cfg: SuiteConfig, path: Path, bot: Any, recipe: Any) -> tuple[dict, list[dict]]:
    from evaluators.vqa import exact_match, summarise, vqa_accuracy

    rows = _rows(path, cfg.limit)
    asked = [bot.hint.ask_short(r["question"]) for r in rows]  # as the shards asked VQA questions
    preds = _answers(bot, _images(path, rows), asked, cfg, recipe, recipe.eval.max_new_tokens, first_line=True)
    scored = []
    for r, pred in zip(rows, preds):
        answers = r.get("answers") or [r["answer"]]
        answers = [a["answer"] if isinstance(a, dict) else a for a in answers]
        scored.append({"id": r.get("id"), "question": r["question"], "prediction": pred, "answers": answers,
                       "accuracy": vqa_accuracy(pred, answers), "exact": exact_match(pred, r.get("answer", answers[0])),
                       "question_type": r.get("question_type") or r.get("type"), "answer_type": r.get("answer_type")})
    return summarise(scored), scored


def _caption(cfg: SuiteConfig, path: Path, bot: Any, recipe: Any) -> tuple[dict, list[dict]]:
    from evaluators.caption import caption_scores

    rows = _rows(path, cfg.limit)
    preds = _answers(bot, _images(path, rows), [""] * len(rows), cfg, recipe, LONG_ANSWER_TOKENS)
    ids = [str(r.get("id", i)) for i, r in enumerate(rows)]
    metrics = caption_scores(dict(zip(ids, preds)), {i: r["references"] for i, r in zip(ids, rows)}, cfg.segmenter)
    return metrics, [{"id": i, "prediction": p, "references": r["references"]} for i, p, r in zip(ids, preds, rows)]


def _choice(cfg: SuiteConfig, path: Path, bot: Any, recipe: Any) -> tuple[dict, list[dict]]:
    from evaluators.choice import extract_choice, prompt_for, read_mmbench_tsv, rotations, score_circular

    items = read_mmbench_tsv(path)[: cfg.limit]
    flat = [rot for item in items for rot in rotations(item)]
    preds = _answers(bot, [base64.b64decode(r.image_b64) for r in flat], [prompt_for(r, cfg.answer_with) for r in flat], cfg,
                     recipe, recipe.eval.max_new_tokens, first_line=True)
    replies = {(r.index, tuple(r.options)): p for r, p in zip(flat, preds)}  # asked in one batched pass
    metrics = score_circular(items, lambda rot: replies[(rot.index, tuple(rot.options))])
    log = [{"index": r.index, "answer": r.answer, "reply": p, "choice": extract_choice(p, r.options)}
           for r, p in zip(flat, preds)]
    return metrics, log


def _describe(cfg: SuiteConfig, path: Path, bot: Any, recipe: Any) -> tuple[dict, list[dict]]:
    from pipelines.demo.describe import check_description

    rows = _rows(path, cfg.limit)
    preds = _answers(bot, _images(path, rows), [r["question"] for r in rows], cfg, recipe, LONG_ANSWER_TOKENS)
    log = []
    for r, pred in zip(rows, preds):
        ok, why = check_description(pred, r["shapes"])
        log.append({"id": r.get("id"), "image": r["image"], "prediction": pred, "correct": ok, "why": why})
    correct = sum(x["correct"] for x in log)
    return {"accuracy": correct / max(1, len(log)), "correct": correct, "n": len(log)}, log


def _judge(cfg: SuiteConfig, path: Path, bot: Any, recipe: Any) -> tuple[dict, list[dict]]:
    """Our answers, then the judge's scores of the reference and ours (evaluators/judge.py)."""
    import asyncio

    from evaluators.judge import JudgeItem

    if recipe.eval.judge is None:
        raise SuiteError("a judge suite needs eval.judge (an OpenAI-compatible endpoint): not configured")
    rows = _rows(path, cfg.limit)
    answers = _answers(bot, _images(path, rows), [r["question"] for r in rows], cfg, recipe, LONG_ANSWER_TOKENS)
    items = [JudgeItem(str(r.get("id", i)), r.get("category", "all"), r["question"], r.get("context", ""),
                       r["reference"], a) for i, (r, a) in enumerate(zip(rows, answers))]
    return asyncio.run(_judged(recipe.eval.judge, items))


async def _judged(config: Any, items: list) -> tuple[dict, list[dict]]:
    from evaluators.judge import Judge, JudgeLedger, judge_all, relative_scores
    from llm.cache import ResponseCache
    from llm.client import ChatClient
    from llm.errors import EndpointError

    ledger = JudgeLedger(config)
    with ResponseCache(config.cache_path, section="eval.judge") as cache:
        try:
            client = ChatClient(config, ledger, kept=f"every verdict received is kept in {config.cache_path}")
        except EndpointError as e:
            raise SuiteError(str(e)) from None
        try:
            verdicts = await judge_all(Judge(config, cache, client, ledger), items)
        except EndpointError as e:
            raise SuiteError(f"judge unreachable: {e}") from None
        finally:
            await client.aclose()
    metrics = relative_scores(verdicts)
    metrics["relative"] = metrics["overall"]["relative"]
    metrics["requests"] = ledger.counts["requests"]
    log = [{"id": v.item_id, "category": v.category, "reference_score": v.reference_score,
            "answer_score": v.answer_score, "error": v.error, "answer": i.answer} for v, i in zip(verdicts, items)]
    return metrics, log


def main_metric(kind: str, metrics: dict) -> tuple[str, float] | None:
    """The figure a suite is known by, for the report's chart and the summary."""
    key = {"vqa": "accuracy", "caption": "cider_d", "choice": "circular_accuracy", "describe": "accuracy",
           "judge": "relative"}[kind]
    value = metrics.get(key)
    return (key, float(value)) if isinstance(value, (int, float)) else None


def dump(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
