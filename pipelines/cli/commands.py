"""The commands that are not pipeline steps: `vcla chat`, `vcla export`, `vcla webui` (no flow, no Prefect)."""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from pipelines.cli.preflight import checked_image, checked_images
from pipelines.core.errors import StepFailed, UsageError
from pipelines.recipe import Recipe
from pipelines.steps.evaluate import checkpoint_to_use, load_checked


def chat_command(recipe: Recipe, options: argparse.Namespace) -> dict[str, Any]:
    """`vcla chat`: sampled answers (VisualCLA defaults), repeatable with --seed, or greedy with --greedy.
    Every `--image` goes into the first message, in order; in an interactive session a line
    `/image PATH ...` attaches images to the next message (`training.chat.chat`'s `turn_images`)."""
    import torch

    from training.chat import GREEDY, ChatModel, chat

    max_pixels = recipe.download.max_image_pixels
    images = checked_images(options.image, max_pixels)
    checkpoint = checkpoint_to_use(recipe, options.checkpoint)
    model, history = load_checked("chat", checkpoint, ChatModel.load), None
    several = _takes_several_images(model.template)
    if len(images) > 1 and not several:
        raise UsageError(f"--image: {len(images)} images, but {checkpoint} has the template {model.template!r}, "
                         "which places one image; pass one --image, or chat with a later stage")
    if getattr(options, "seed", None) is not None:
        torch.manual_seed(options.seed)
    generation = GREEDY if getattr(options, "greedy", False) else {}
    short = getattr(options, "short", False)  # the checkpoint's own hint: what training's short-answer rows asked
    messages = [(options.text, [])] if options.text else _typed_messages(max_pixels, several)
    for text, turn_images in messages:
        response, history = chat(model, images, model.hint.ask_short(text) if short else text, history,
                                 turn_images=turn_images, **generation)
        print(response)
    return {"turns": len(history or [])}


IMAGE_COMMAND = "/image"
"""An interactive line `/image PATH [PATH ...]` attaches images to the next message (quote a path with spaces)."""


def _typed_messages(max_pixels: int, several: bool) -> Iterator[tuple[str, list[Image.Image]]]:
    """(message, images attached to it by `/image` lines before it), for the lines typed at the prompt,
    until an empty line, the end of input (Ctrl-D) or Ctrl-C. A bad `/image` line (or any, when the
    checkpoint's template places one image: `several` False) is reported on stderr and attaches
    nothing; the session goes on."""
    attached: list[Image.Image] = []
    for line in _typed_lines():
        if line.split(maxsplit=1)[:1] != [IMAGE_COMMAND]:
            yield line, attached
            attached = []
            continue
        try:
            if not several:
                raise UsageError(f"{IMAGE_COMMAND}: this checkpoint's template places one image (the --image); "
                                 "chat with a later stage to add images")
            attached += _image_line(line, max_pixels)
        except UsageError as e:
            print(f"vcla chat: {e}", file=sys.stderr)
            continue
        print(f"[chat] {len(attached)} image(s) go with your next message", file=sys.stderr)


def _image_line(line: str, max_pixels: int) -> list[Image.Image]:
    """The images a `/image PATH [PATH ...]` line names, each checked as `--image` is; UsageError otherwise."""
    try:
        paths = shlex.split(line)[1:]
    except ValueError as e:  # an unclosed quote
        raise UsageError(f"{IMAGE_COMMAND}: cannot read the line ({e}); quote a path with spaces") from None
    if not paths:
        raise UsageError(f"{IMAGE_COMMAND}: no file given; type {IMAGE_COMMAND} PATH [PATH ...]")
    return [checked_image(Path(p), max_pixels, flag=IMAGE_COMMAND) for p in paths]


def _takes_several_images(template: str) -> bool:
    from pipelines.webui.uploads import takes_several_images  # gradio-free: checks and template facts only

    return takes_several_images(template)


def _typed_lines() -> Iterator[str]:
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
