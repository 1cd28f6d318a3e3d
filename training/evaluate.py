"""Short-answer accuracy on a VQA-style JSONL split: exact match after normalisation.

    metrics = evaluate(Path("runs/demo/train/stage2"), Path("runs/demo/demo-data/heldout/eval_zh.jsonl"), EvalConfig())

Each line is ``{image, question, answer, ...}``; `image` (or a list of them: a question about several
images, asked with each on a line before the question, or at the question's `<image>` markers) is
relative to the corpus folder (the JSONL's grandparent, as in `DIR/heldout/eval_zh.jsonl`) or to the
JSONL's own folder. The
question gets the short-answer hint the checkpoint's shards appended to VQA questions (the
render's `vqa_hint`, kept in stage.json `prompt`; `ChatModel.hint`), decoding is greedy, and the
answer is cut at the template's stop string. Predictions (each with the `instruction` asked) are
written next to the metrics when `out` is given.
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

import torch

from common.files import write_json, write_jsonl
from training.chat import ChatModel, as_images, build_prompt, cut_at_stop, stop_token_ids
from training.config import EvalConfig

_PUNCT = re.compile(r"[\s\.,!?;:，。！？；：、\"'“”‘’()（）\[\]【】]+")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().strip()
    text = _PUNCT.sub(" ", text).strip()
    return re.sub(r"\s+", " ", text)


def read_split(split: Path, limit: int | None = None) -> list[dict]:
    items = []
    with open(split, encoding="utf-8-sig") as f:  # a BOM (Windows editors) is not part of line 1
        for line in f:
            if line.strip():
                items.append(json.loads(line))
                if limit and len(items) >= limit:
                    break
    return items


def split_image_path(split: Path, ref: str) -> Path:
    """The file an eval split's `image` names: under the corpus folder (the split's grandparent) or
    beside the split."""
    for base in (split.parent.parent, split.parent):
        if (base / ref).is_file():
            return base / ref
    raise FileNotFoundError(f"{split}: image {ref!r} not found next to the split or its corpus folder")


@torch.no_grad()
def answer_batch(bot: ChatModel, images: list, texts: list[str], max_new_tokens: int,
                 first_line: bool = False) -> list[str]:
    """Greedy answers to `texts` about `images` (paths, bytes or PIL images; one each, or a list each),
    generated together: prompts left-padded, so every prompt ends where generation starts. Cut at the
    template's stop string (and at the first newline with `first_line`: short answers)."""
    tok = bot.tokenizer
    per_item = [as_images(im) for im in images]
    prompts = [build_prompt(bot, text, [], len(ims)) for text, ims in zip(texts, per_item)]
    flat = [im for ims in per_item for im in ims]
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out_ids = bot.model.generate(
        input_ids=ids.to(bot.model.device), attention_mask=mask.to(bot.model.device),
        pixel_values=bot.pixel_values(flat) if flat else None, max_new_tokens=max_new_tokens, do_sample=False,
        eos_token_id=stop_token_ids(tok, bot.template), pad_token_id=tok.pad_token_id,
    )
    answers = [cut_at_stop(tok.decode(o, skip_special_tokens=True), bot.template) for o in out_ids]
    return [a.split("\n")[0] for a in answers] if first_line else answers


def answer_all(bot: ChatModel, images: list, texts: list[str], max_new_tokens: int, batch_size: int,
               first_line: bool = False) -> list[str]:
    """`answer_batch` over `batch_size` items at a time, in order."""
    out: list[str] = []
    for s in range(0, len(texts), batch_size):
        out += answer_batch(bot, images[s:s + batch_size], texts[s:s + batch_size], max_new_tokens, first_line)
    return out


@torch.no_grad()
def evaluate(checkpoint: Path, split: Path, cfg: EvalConfig = EvalConfig(), out: Path | None = None,
             bot: ChatModel | None = None) -> dict:
    split = Path(split)
    bot = bot or ChatModel.load(checkpoint)
    items = read_split(split, cfg.limit)
    asked = [bot.hint.ask_short(it["question"]) for it in items]  # as the shards asked VQA questions
    images = [[split_image_path(split, ref) for ref in as_images(it["image"])] for it in items]
    preds = answer_all(bot, images, asked, cfg.max_new_tokens, cfg.batch_size, first_line=True)
    correct, predictions = 0, []
    for it, text, pred in zip(items, asked, preds):
        ok = normalize(pred) == normalize(it["answer"])
        correct += ok
        predictions.append({"id": it.get("id"), "question": it["question"], "instruction": text,
                            "answer": it["answer"], "prediction": pred, "correct": bool(ok)})
    metrics = {"accuracy": correct / max(1, len(items)), "n": len(items), "correct": correct,
               "checkpoint": str(checkpoint), "split": str(split), "vqa_hint": bot.hint.hint}
    if out is not None:
        write_jsonl(Path(out) / "eval_predictions.jsonl", predictions, sort_keys=False)
        write_json(Path(out) / "eval_metrics.json", metrics, sort_keys=False)
    metrics["examples"] = predictions[:5]
    return metrics
