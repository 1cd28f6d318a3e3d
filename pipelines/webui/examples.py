"""Example prompts and images for the chat tab: the run's held-out images when it has them.

The demo corpus keeps its held-out suites in `<corpus>/heldout/*.jsonl`, rows naming an image
(relative to the corpus folder) and a Chinese `question`. Those images were never trained on, so
they show what the model learned rather than what it memorised. Without them the tab offers
questions only.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.webui.rejected import json_rows

QUESTIONS = ("图中是什么？", "请详细描述这张图片。", "图中的形状是什么颜色？")
"""Questions offered without held-out suites (and the image-free examples)."""


def heldout_examples(corpus: Path, limit: int = 4) -> list[tuple[Path, str]]:
    """(image, question) pairs from the corpus's held-out suites, alternating between suites."""
    suites = [_pairs(file, Path(corpus)) for file in sorted(Path(corpus, "heldout").glob("*.jsonl"))]
    suites = [s for s in suites if s]
    picked: list[tuple[Path, str]] = []
    for i in range(limit):
        if not suites:
            break
        suite = suites[i % len(suites)]
        if i // len(suites) < len(suite):
            picked.append(suite[i // len(suites)])
    return picked


def _pairs(file: Path, corpus: Path, per_suite: int = 4) -> list[tuple[Path, str]]:
    pairs = []
    for row in json_rows(file):
        image, question = row.get("image"), row.get("question")
        if isinstance(image, str) and isinstance(question, str) and (corpus / image).is_file():
            pairs.append((corpus / image, question))
        if len(pairs) >= per_suite:
            break
    return pairs
