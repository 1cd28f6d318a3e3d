"""English text about a scene, written together with its Chinese translation.

Every builder returns `Pair`s (en, zh). The corpus writer puts the English into the source
files and every pair into the translation memory, so the demo's translation is exact and
needs no API. Answers to the short VQA questions are single words in both languages.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import NamedTuple

from pipelines.demo.scenes import COLORS, SHAPES, Scene, Shape


class Pair(NamedTuple):
    en: str
    zh: str


@dataclass(frozen=True)
class VQAItem:
    question: Pair
    answer: Pair
    question_type: str
    answer_type: str  # VQAv2: "yes/no" | "number" | "other"
    distractor: str  # a plausible wrong English answer, used to make the 10 answers noisy


_POSITION_PHRASE_EN = {
    "top left": "in the top left corner", "top": "at the top", "top right": "in the top right corner",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "in the bottom left corner", "bottom": "at the bottom",
    "bottom right": "in the bottom right corner",
}
_IMAGE = "<image>"


def _a(shape: Shape) -> Pair:
    article = "an" if shape.color_en[0] in "aeiou" else "a"
    return Pair(f"{article} {shape.color_en} {shape.kind_en}", f"一个{shape.color_zh}的{shape.kind_zh}")


def _join_en(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _listing(shapes: tuple[Shape, ...]) -> Pair:
    parts = [_a(s) for s in shapes]
    if len(parts) == 1:
        return parts[0]
    en = _join_en([p.en for p in parts])
    zh = "、".join(p.zh for p in parts[:-1]) + "和" + parts[-1].zh
    return Pair(en, zh)


def _count_en(n: int) -> str:
    return "1 shape" if n == 1 else f"{n} shapes"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption(scene: Scene, rng: random.Random) -> Pair:
    things, n = _listing(scene.shapes), len(scene.shapes)
    bg = Pair(scene.background_en, scene.background_zh)
    style = rng.randrange(4)
    if style == 0:
        return Pair(_cap(f"{things.en} on a {bg.en} background."), f"{bg.zh}背景上有{things.zh}。")
    if style == 1:
        return Pair(f"A picture of {things.en}.", f"一张图片，上面有{things.zh}。")
    if style == 2:
        return Pair(f"{_cap(_count_en(n))} on a {bg.en} background: {things.en}.",
                    f"{bg.zh}背景上有{n}个形状：{things.zh}。")
    en = _join_en([f"{_a(s).en} {_POSITION_PHRASE_EN[s.position_en]}" for s in scene.shapes])
    zh = "，".join(f"{s.position_zh}有{_a(s).zh}" for s in scene.shapes)
    return Pair(_cap(en) + ".", zh + "。")


def color_question(shape: Shape) -> VQAItem:
    return VQAItem(
        Pair(f"What color is the {shape.kind_en}?", f"{shape.kind_zh}是什么颜色？"),
        Pair(shape.color_en, shape.color_zh),
        "what color is the", "other", COLORS[(shape.color + 1) % len(COLORS)][0],
    )


def vqa_items(scene: Scene, rng: random.Random) -> list[VQAItem]:
    """All colour questions of a scene plus two of the other kinds (shape, count, position, yes/no)."""
    items = [color_question(s) for s in scene.shapes]
    others: list[VQAItem] = []
    for s in scene.shapes:
        others.append(VQAItem(
            Pair(f"What shape is the {s.color_en} object?", f"{s.color_zh}的物体是什么形状？"),
            Pair(s.kind_en, s.kind_zh), "what shape is the", "other", SHAPES[(s.kind + 1) % len(SHAPES)][0]))
        others.append(VQAItem(
            Pair(f"Where is the {s.color_en} {s.kind_en}?", f"{s.color_zh}的{s.kind_zh}在哪里？"),
            Pair(s.position_en, s.position_zh), "where is the", "other", "center"))
    n = len(scene.shapes)
    others.append(VQAItem(Pair("How many shapes are there in the image?", "图中有几个形状？"),
                          Pair(str(n), str(n)), "how many", "number", str(n % 3 + 1)))
    absent = rng.randrange(len(COLORS))
    probe = scene.shapes[0]
    present = absent == probe.color
    others.append(VQAItem(
        Pair(f"Is there a {COLORS[absent][0]} {probe.kind_en} in the image?",
             f"图中有{COLORS[absent][1]}的{probe.kind_zh}吗？"),
        Pair("yes", "是") if present else Pair("no", "否"), "is there a", "yes/no", "no" if present else "yes"))
    return items + rng.sample(others, 2)


def _with_image(question: Pair, rng: random.Random) -> Pair:
    """LLaVA puts `<image>` before the first question mostly, after it sometimes."""
    if rng.random() < 0.8:
        return Pair(f"{_IMAGE}\n{question.en}", f"{_IMAGE}\n{question.zh}")
    return Pair(f"{question.en}\n{_IMAGE}", f"{question.zh}\n{_IMAGE}")


def _chat_qa(scene: Scene, rng: random.Random) -> list[tuple[Pair, Pair]]:
    s = rng.choice(scene.shapes)
    n = len(scene.shapes)
    qa = [
        (Pair(f"What color is the {s.kind_en}?", f"{s.kind_zh}是什么颜色？"),
         Pair(f"The {s.kind_en} is {s.color_en}.", f"{s.kind_zh}是{s.color_zh}的。")),
        (Pair("How many shapes are in the image?", "图片里有多少个形状？"),
         Pair(f"There {'is' if n == 1 else 'are'} {_count_en(n)} in the image.", f"图片里有{n}个形状。")),
        (Pair(f"Where is the {s.color_en} {s.kind_en}?", f"{s.color_zh}的{s.kind_zh}在哪里？"),
         Pair(f"The {s.color_en} {s.kind_en} is {_POSITION_PHRASE_EN[s.position_en]}.",
              f"{s.color_zh}的{s.kind_zh}在{s.position_zh}。")),
        (Pair("What color is the background?", "背景是什么颜色？"),
         Pair(f"The background is {scene.background_en}.", f"背景是{scene.background_zh}的。")),
        (Pair(f"What shape is the {s.color_en} object?", f"{s.color_zh}的物体是什么形状？"),
         Pair(f"The {s.color_en} object is a {s.kind_en}.", f"{s.color_zh}的物体是一个{s.kind_zh}。")),
    ]
    return rng.sample(qa, rng.choice((2, 3)))


def conversation(scene: Scene, rng: random.Random) -> list[Pair]:
    """Multi-turn chat: alternating user / assistant turns, `<image>` in the first user turn."""
    turns: list[Pair] = []
    for i, (q, a) in enumerate(_chat_qa(scene, rng)):
        turns += [_with_image(q, rng) if i == 0 else q, a]
    return turns


_DETAIL_PROMPTS = [
    Pair("Describe the image in detail.", "请详细描述这张图片。"),
    Pair("What do you see in this picture? Describe it carefully.", "你在这张图片里看到了什么？请仔细描述。"),
    Pair("Give a detailed description of the image.", "请对这张图片做一个详细的描述。"),
]


def detail(scene: Scene, rng: random.Random) -> list[Pair]:
    n = len(scene.shapes)
    en = [f"The image shows {_count_en(n)} on a {scene.background_en} background."]
    zh = [f"图片中，{scene.background_zh}背景上有{n}个形状。"]
    for s in scene.shapes:
        en.append(f"{_cap(_a(s).en)} is {_POSITION_PHRASE_EN[s.position_en]}.")
        zh.append(f"{s.position_zh}有{_a(s).zh}。")
    return [_with_image(rng.choice(_DETAIL_PROMPTS), rng), Pair(" ".join(en), "".join(zh))]


def reasoning(scene: Scene, rng: random.Random) -> list[Pair]:
    n = len(scene.shapes)
    s = rng.choice(scene.shapes)
    options = [(
        Pair(f"If the {s.color_en} {s.kind_en} were removed, how many shapes would be left?",
             f"如果去掉{s.color_zh}的{s.kind_zh}，还会剩下几个形状？"),
        Pair(f"{_cap(_count_en(n - 1))} would be left, because the image has {_count_en(n)} and one is removed.",
             f"会剩下{n - 1}个形状，因为图中原本有{n}个形状，去掉了其中一个。"),
    )]
    higher = [(a, b) for a in scene.shapes for b in scene.shapes if a.cell[0] < b.cell[0]]
    if higher:
        a, b = rng.choice(higher)
        options.append((
            Pair(f"Which is higher in the image, the {a.kind_en} or the {b.kind_en}?",
                 f"图中{a.kind_zh}和{b.kind_zh}哪个位置更高？"),
            Pair(f"The {a.kind_en} is higher, because it is {_POSITION_PHRASE_EN[a.position_en]} "
                 f"while the {b.kind_en} is {_POSITION_PHRASE_EN[b.position_en]}.",
                 f"{a.kind_zh}更高，因为它在{a.position_zh}，而{b.kind_zh}在{b.position_zh}。"),
        ))
    q, ans = rng.choice(options)
    return [_with_image(q, rng), ans]
