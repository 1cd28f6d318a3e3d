"""The commands that are not pipeline steps: `vcla chat`, `vcla export`, `vcla webui` (no flow, no Prefect)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
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


def webui_command(recipe: Recipe, options: argparse.Namespace) -> dict[str, Any]:
    """`vcla webui`: serves until Ctrl-C. Gradio and torch are imported here, not when `vcla` starts."""
    from pipelines.webui.safety import bind_settings

    bind = bind_settings(options.host, options.port, options.auth_env, options.share)
    from pipelines.webui.app import WebUI, build_app, launch

    bot, checkpoint, reason = _webui_model(recipe, options.checkpoint)
    webui = WebUI(bot=bot, run_dir=recipe.run_dir, lang=options.lang, checkpoint=checkpoint, no_model_reason=reason,
                  max_pixels=recipe.download.max_image_pixels,
                  corpus=Path(recipe.demo.output_dir) if recipe.demo is not None else None)
    print(f"[webui] model {checkpoint or 'none'} · data {recipe.run_dir}"
          + (f" · login for user {bind.auth[0]!r}" if bind.auth else ""))
    launch(build_app(webui), webui, bind)
    return {}


def _webui_model(recipe: Recipe, given: Path | None) -> tuple[Any, Path | None, str]:
    """(model, its folder, "") to chat with, or (None, None, why not) when the run has no trained stage yet."""
    from training.chat import ChatModel

    try:
        checkpoint = checkpoint_to_use(recipe, given)
    except StepFailed as e:
        if given is not None:
            raise
        return None, None, str(e)
    return load_checked("webui", checkpoint, ChatModel.load), checkpoint, ""
