"""The commands that are not pipeline steps: `vcla chat` and `vcla export` (no flow, no Prefect)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from pipelines.cli.preflight import checked_image
from pipelines.core.errors import StepFailed
from pipelines.recipe import Recipe
from pipelines.steps.evaluate import checkpoint_to_use, load_checked


def chat_command(recipe: Recipe, options: argparse.Namespace) -> dict[str, Any]:
    """`vcla chat`: sampled answers (VisualCLA defaults), repeatable with --seed, or greedy with --greedy."""
    import torch

    from training.chat import GREEDY, ChatModel, chat

    image = checked_image(options.image, recipe.download.max_image_pixels)
    model, history = load_checked("chat", checkpoint_to_use(recipe, options.checkpoint), ChatModel.load), None
    if getattr(options, "seed", None) is not None:
        torch.manual_seed(options.seed)
    generation = GREEDY if getattr(options, "greedy", False) else {}
    short = getattr(options, "short", False)  # the checkpoint's own hint: what training's short-answer rows asked
    for text in [options.text] if options.text else _typed_messages():
        response, history = chat(model, image, model.hint.ask_short(text) if short else text, history, **generation)
        print(response)
    return {"turns": len(history or [])}


def _typed_messages() -> Iterator[str]:
    """Lines typed at the prompt, until an empty line, the end of input (Ctrl-D) or Ctrl-C."""
    while True:
        try:
            text = input("你: ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if not text:
            return
        yield text



def export_command(recipe: Recipe, options: argparse.Namespace) -> dict[str, Any]:
    from training.export import export

    checkpoint = checkpoint_to_use(recipe, options.checkpoint)
    out = options.out or recipe.run_dir / "export" / f"{checkpoint.name}-{options.format}"
    try:
        folder = load_checked("export", checkpoint, lambda c: export(c, options.format, out))
    except ValueError as e:  # export's refusals ("llava-hf export needs a linear or mlp2x_gelu connector ...")
        hint = "" if options.format == "merged" else "; `--format merged` exports any checkpoint"
        raise StepFailed(f"export: {checkpoint}: {e}{hint}") from None
    print(f"[export] {folder}")
    return {"folder": str(folder)}
