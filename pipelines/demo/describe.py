"""Is a description of a demo scene correct? A parser of the demo's own Chinese phrasing.

An answer to "请详细描述这张图片。" is correct when it names every shape of the scene with its colour
("一个蓝色的三角形", "蓝色三角形") and no shape that is not there. The corpus knows each scene, so
the held-out describe suite stores its (colour, shape) pairs; position and background words are not
judged. Only the corpus's six colours and six shapes are read: other words are ignored.
"""

from __future__ import annotations

import re

from pipelines.demo.scenes import COLORS, SHAPES

_COLOR = "|".join(zh for _, zh, _ in COLORS)
_SHAPE = "|".join(zh for _, zh in SHAPES)
_PAIR = re.compile(rf"({_COLOR})的?({_SHAPE})")
_SHAPE_ONLY = re.compile(rf"({_SHAPE})")


def described_shapes(answer: str) -> set[tuple[str, str]]:
    """The (colour, shape) pairs an answer names, e.g. {("蓝色", "三角形")}."""
    return set(_PAIR.findall(answer))


def check_description(answer: str, shapes: list[tuple[str, str]] | list[list[str]]) -> tuple[bool, str]:
    """(correct, why): every (colour, shape) of the scene named, and no other shape named at all."""
    want = {(c, k) for c, k in shapes}
    named = described_shapes(answer)
    missing, extra = want - named, named - want
    stray = {k for k in _SHAPE_ONLY.findall(answer)} - {k for _, k in want} - {k for _, k in extra}
    if missing:
        return False, "missing " + "、".join(f"{c}的{k}" for c, k in sorted(missing))
    if extra or stray:
        return False, "not in the image: " + "、".join(sorted({f"{c}的{k}" for c, k in extra} | stray))
    return True, "every shape named with its colour, none extra"
