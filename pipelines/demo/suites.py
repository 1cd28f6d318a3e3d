"""The demo's held-out evaluation suites beyond colour VQA (`heldout/eval_zh.jsonl`), one file per
kind, on the held-out images only (never trained on):

    heldout/captions_zh.jsonl  {id, image, references}: the four Chinese caption phrasings of the scene
    heldout/describe_zh.jsonl  {id, image, question, shapes}: "请详细描述这张图片。" and the scene's
                               (colour, shape) pairs, for pipelines/demo/describe.py's check
    heldout/choice_zh.tsv      MMBench layout (index, question, hint, A-D, answer, category, image as
                               base64): colour-of-a-shape and shape-of-a-colour questions

Deterministic from the scenes alone (no random draws), so adding them changes no other file.

`write_choice_training` writes the training side of the multiple-choice format: one question per
training scene in LLaVA layout (Chinese, asked exactly as the choice suite asks: evaluators.choice's
`prompt_for` with `answer_with: option`), with the right option at a random letter, from its own random
stream, answered with the right option's text. Answered with the letter, the demo's 2-layer LLM never
learnt to map a text to its letter (CircularEval 0.000, vanilla 0.236: chance; NOTES.md).
"""

from __future__ import annotations

import base64
import csv
import json
import random
from pathlib import Path

from evaluators.choice import ChoiceItem, prompt_for
from pipelines.demo import texts
from pipelines.demo.scenes import COLORS, SHAPES, Scene, image_name

DESCRIBE = "请详细描述这张图片。"
CHOICE_ANSWER_WITH = "option"
"""How the demo's choice items are asked and answered; the demo recipe's choice suite says the same."""


class _Style:
    """A stand-in for the rng `texts.caption` draws its phrasing from: always phrasing `k`."""

    def __init__(self, k: int) -> None:
        self.k = k

    def randrange(self, n: int) -> int:
        return self.k % n


def write_heldout_suites(folder: Path, scenes: list[Scene]) -> dict[str, int]:
    captions, describe, choice = [], [], []
    for scene in scenes:
        image = f"images/{image_name(scene.image_id)}"
        refs = sorted({texts.caption(scene, _Style(k)).zh for k in range(4)})
        captions.append({"id": scene.image_id, "image": image, "references": refs})
        describe.append({"id": scene.image_id, "image": image, "question": DESCRIBE,
                         "shapes": [[s.color_zh, s.kind_zh] for s in scene.shapes]})
        choice += choice_rows(scene, folder.parent / "images" / image_name(scene.image_id))
    _jsonl(folder / "captions_zh.jsonl", captions)
    _jsonl(folder / "describe_zh.jsonl", describe)
    _tsv(folder / "choice_zh.tsv", choice)
    return {"heldout_captions": len(captions), "heldout_describe": len(describe), "heldout_choice": len(choice)}


def choice_rows(scene: Scene, image_file: Path) -> list[dict]:
    """Per shape: its colour among four (the right one and the next three), and the shape a colour wears."""
    b64 = base64.b64encode(image_file.read_bytes()).decode("ascii")
    rows = []
    for k, s in enumerate(scene.shapes):
        colours = [COLORS[(s.color + d) % len(COLORS)][1] for d in range(4)]
        kinds = [SHAPES[(s.kind + d) % len(SHAPES)][1] for d in range(4)]
        for category, question, options, answer in (
            ("color", f"图中{s.kind_zh}是什么颜色？", _rotate(colours, scene.image_id + k), s.color_zh),
            ("shape", f"图中{s.color_zh}的物体是什么形状？", _rotate(kinds, scene.image_id + k + 1), s.kind_zh),
        ):
            rows.append({"index": scene.image_id * 10 + len(rows), "question": question, "hint": "",
                         **{letter: text for letter, text in zip("ABCD", options)},
                         "answer": "ABCD"[options.index(answer)], "category": category, "image": b64})
    return rows


def write_choice_training(path: Path, scenes: list[Scene], seed: int) -> int:
    """One multiple-choice item per training scene, LLaVA layout, answered with the right option's text."""
    rng = random.Random(f"{seed}:choice")
    items = []
    for scene in scenes:
        s = rng.choice(scene.shapes)
        if rng.random() < 0.5:
            question = f"图中{s.kind_zh}是什么颜色？"
            options = [s.color_zh] + [COLORS[i][1] for i in rng.sample([i for i in range(len(COLORS)) if i != s.color], 3)]
            right = s.color_zh
        else:
            question = f"图中{s.color_zh}的物体是什么形状？"
            options = [s.kind_zh] + [SHAPES[i][1] for i in rng.sample([i for i in range(len(SHAPES)) if i != s.kind], 3)]
            right = s.kind_zh
        rng.shuffle(options)
        letters = list(zip("ABCD", options))
        item = ChoiceItem(scene.image_id, question, "", letters, "ABCD"[options.index(right)], "", None)
        items.append({"id": f"{scene.image_id:06d}_choice", "image": image_name(scene.image_id),
                      "conversations": [{"from": "human", "value": f"<image>\n{prompt_for(item, CHOICE_ANSWER_WITH)}"},
                                        {"from": "gpt", "value": right}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(items, ensure_ascii=False) + "\n", encoding="utf-8")
    return len(items)


def _rotate(options: list[str], by: int) -> list[str]:
    """The right answer (first) moved to position `by % 4`, so answers spread over A-D."""
    k = by % len(options)
    return options[-k:] + options[:-k] if k else options


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _tsv(path: Path, rows: list[dict]) -> None:
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"]
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, columns, delimiter="\t", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
