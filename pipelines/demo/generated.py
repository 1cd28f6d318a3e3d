"""The replies a good generator model would give for the demo's training images, written as a
response-cache exchange file (`generate/responses.jsonl`), so `make demo` runs the generate step
offline: its cache serves every request.

The corpus knows each scene, so it writes what is true of it, in Chinese, in the reply shapes the
prompts ask for (conversation / detail / reasoning). Each row is keyed as the generate step will
key its request: the context is built from the same caption and boxes the step will read (the
URL list's caption, the instances file's boxes), and the model, prompt id and sampling settings
come from the recipe's `generate:` section. Held-out images get no rows: they get no generated data.

The corpus's noise (pipelines/demo/noise.py) changes contexts: a caption of another image joins that
image's context, and an exact or near copy's caption joins its original's when the curate step
merges the two (or stays alone with the copy when it does not). Each scene's reply is written under
every such context, so the cache serves the run whatever curate decided.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from generators.config import KINDS, GenerateConfig, sampling_of
from generators.context import Box, Context, normalise_box
from generators.prompt_set import load_prompts
from pipelines.demo import texts
from pipelines.demo.scenes import SHAPES, Scene, coco_bbox, image_name, placements

IMAGE = "<image>"


def scene_context(scene: Scene, captions: list[str], boxes: bool = True) -> Context:
    """The context the generate step builds for this scene's image (see the module docstring)."""
    found = [Box(SHAPES[p.shape.kind][0], normalise_box(*coco_bbox(p, scene), scene.width, scene.height))
             for p in placements(scene)] if boxes else []
    return Context(image_name(scene.image_id), list(captions), found)


def scene_contexts(scene: Scene, caption: str, noise: dict[str, Any]) -> list[Context]:
    """Every context the generate step may build for this scene's image, and for its copies."""
    own = [caption] + [r["caption"] for r in noise.get("other_image", []) if r["original_image_id"] == scene.image_id]
    copies = [r["caption"] for kind in ("exact_copies", "near_copies") for r in noise.get(kind, [])
              if r["original_image_id"] == scene.image_id]
    contexts = [scene_context(scene, own), scene_context(scene, own + copies)]
    contexts += [scene_context(scene, [c], boxes=False) for c in copies]  # a copy curate left alone
    return contexts


def write_responses(path: Path, scenes: list[Scene], captions: list[str], config: GenerateConfig,
                    seed: int, noise: dict[str, Any] | None = None) -> int:
    """Rows per training scene and kind, for every kind (the recipe's shares pick among them), under
    each context the scene's image may get (`scene_contexts`)."""
    prompt_id = load_prompts(config).prompt_id
    rng = random.Random(f"{seed}:generate")
    rows = []
    for scene, caption in zip(scenes, captions):
        hashes = sorted({c.hash() for c in scene_contexts(scene, caption, noise or {})})
        for kind in KINDS:
            content = json.dumps(reply(kind, scene, rng), ensure_ascii=False)
            rows += [{"model": config.model, "prompt_version": prompt_id, "kind": kind, "context_hash": h,
                      "sampling": sampling_of(config, None, 0), "content": content} for h in hashes]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def reply(kind: str, scene: Scene, rng: random.Random) -> dict[str, Any]:
    """The reply JSON for `kind`, from the corpus's own Chinese phrasing of the scene."""
    if kind == "conversation":
        turns = texts.conversation(scene, rng)
        pairs = [(_plain(q.zh), a.zh) for q, a in zip(turns[::2], turns[1::2])]
        return {"conversation": [{"question": q, "answer": a} for q, a in pairs]}
    if kind == "detail":
        return {"description": texts.detail(scene, rng)[1].zh}
    question, answer = texts.reasoning(scene, rng)
    return {"question": _plain(question.zh), "answer": answer.zh}


def _plain(question: str) -> str:
    """A question without the `<image>` marker (the step puts it back in the first user turn)."""
    return question.replace(IMAGE, "").strip()
