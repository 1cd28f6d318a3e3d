"""The stages of a run, in order, and what each one reads, writes and depends on.

A stage's `run(recipe, options) -> dict` reads the previous stage's folder under the run folder,
writes its own (docs/ARCHITECTURE.md) and returns a summary for the run's summary table.
`output`, `config` and `code` say what a stage produces and what that depends on, so the
flows (`pipelines/flows.py`) can tell a finished stage from a stale one. Commands that are not
stages (chat, export) are plain functions here too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.recipe import Recipe, RecipeError

Options = argparse.Namespace


class StageFailed(RuntimeError):
    """A stage could not finish; the message says which stage and why. `vcla` exits 1."""


class UsageError(ValueError):
    """A command-line argument that cannot work (a missing --image, an unknown --stage); `vcla` exits 2."""


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Recipe, Options], dict[str, Any]]
    output: Callable[[Recipe], Path | None]
    """The folder whose `_SUCCESS` marks the stage complete; None: nothing local (publish)."""
    config: Callable[[Recipe], Any]
    """The recipe values the output depends on (part of the stage fingerprint)."""
    code: tuple[str, ...]
    """Packages / modules whose source the output depends on (part of the fingerprint)."""
    upstream: str | None


def _demo_data(recipe: Recipe, options: Options) -> dict[str, Any]:
    from pipelines.demo.corpus import generate_demo

    if recipe.demo is None:
        return {"skipped": "the recipe has no demo section"}
    manifest = generate_demo(Path(recipe.demo.output_dir), recipe.demo)
    print(f"[demo-data] {recipe.demo.output_dir}: {manifest['counts']['images']} images")
    return {"counts": manifest["counts"]}


def _download(recipe: Recipe, options: Options) -> dict[str, Any]:
    from pipelines.download import run_download

    return run_download(recipe, recipe.run_dir / "download").to_dict()


def _translate(recipe: Recipe, options: Options) -> dict[str, Any]:
    from pipelines.translate import run_translate

    return run_translate(recipe, recipe.run_dir / "download", recipe.run_dir / "translate").to_dict()


def _render(recipe: Recipe, options: Options) -> dict[str, Any]:
    from pipelines.render import run_render
    from pipelines.runners import map_in_tasks

    return run_render(recipe, recipe.run_dir / "translate", recipe.run_dir / "render", map_in_tasks).to_dict()


def _publish(recipe: Recipe, options: Options) -> dict[str, Any]:
    from pipelines.publish import PublishError, run_publish

    if recipe.publish.repo_id is None and options.command == "build-and-train":
        print("[publish] publish.repo_id is not set; nothing to publish")
        return {"skipped": "publish.repo_id is not set"}
    try:
        result = run_publish(recipe, recipe.run_dir / "render", dry_run=getattr(options, "dry_run", False))
    except PublishError as e:
        raise StageFailed(f"publish: {e}") from None
    return {k: result.get(k) for k in ("commits", "bytes_uploaded") if k in result}


def _train(recipe: Recipe, options: Options) -> dict[str, Any]:
    from pipelines.io import stage_storage_errors
    from training.build import ModelPathError
    from training.checkpoint import UnsafeCheckpointError
    from training.run import CheckpointWriteError, train_stage

    check_stage_option(recipe, options)
    wanted = getattr(options, "stage", None)
    train_dir, summary = recipe.run_dir / "train", {}
    for name, cfg in recipe.stages.items():
        if wanted is not None and name != wanted:
            continue
        init_from = train_dir / cfg.init_from if cfg.init_from else None
        if init_from is not None and not (init_from / "stage.json").is_file():
            raise StageFailed(f"train: stage {name} starts from {cfg.init_from}, which has no checkpoint in "
                              f"{init_from}; train it first (vcla train --stage {cfg.init_from})")
        try:
            with stage_storage_errors("train", train_dir / name, CheckpointWriteError):
                metrics = train_stage(recipe.model, name, cfg, recipe.run_dir / "render", train_dir / name,
                                      init_from=init_from, resume=True if getattr(options, "resume", False) else "auto",
                                      seed=recipe.seed)
        except ModelPathError as e:
            raise RecipeError(f"{recipe.file}: {e}") from None
        except UnsafeCheckpointError as e:
            raise StageFailed(f"train: {e}") from None
        state = "already trained" if metrics.get("skipped") else "trained"
        print(f"[train] {name}: {state}, {metrics.get('steps')} steps, final loss {metrics.get('final_loss')}")
        summary[name] = {k: metrics.get(k) for k in ("steps", "final_loss", "padding_fraction", "train_runtime")}
    return summary


def check_stage_option(recipe: Recipe, options: Options) -> None:
    """UsageError for a `--stage` the recipe does not have."""
    wanted = getattr(options, "stage", None)
    if wanted is not None and wanted not in recipe.stages:
        raise UsageError(f"--stage {wanted}: no such stage in {recipe.file} (stages: {', '.join(recipe.stages)})")


def last_checkpoint(recipe: Recipe, options: Options) -> Path:
    """`--checkpoint` if given, else the run's last trained stage."""
    given = getattr(options, "checkpoint", None)
    folder = Path(given) if given else recipe.run_dir / "train" / list(recipe.stages)[-1]
    if not (folder / "stage.json").is_file():
        raise StageFailed(f"{folder}: no trained stage here; run `vcla train` first or pass --checkpoint DIR")
    return folder


def _eval(recipe: Recipe, options: Options) -> dict[str, Any]:
    """Accuracy on the eval split, plus one chat answer about its first image."""
    from training.chat import GREEDY, ChatModel, ImageError, chat
    from training.evaluate import evaluate, resolve_image

    if recipe.eval.split is None:
        print("[eval] eval.split is not set; nothing to evaluate")
        return {"skipped": "eval.split is not set"}
    recipe.require_files("eval.split")
    checkpoint = last_checkpoint(recipe, options)
    split = Path(recipe.eval.split)
    bot = _loaded("eval", checkpoint, ChatModel.load)
    question = "请详细描述这张图片。"  # one of the demo's LLaVA "detail" prompts
    try:
        metrics = evaluate(checkpoint, split, recipe.eval, out=recipe.run_dir / "eval", bot=bot)
        print(f"[eval] {checkpoint.name}: accuracy {metrics['accuracy']:.3f} on {metrics['n']} questions")
        first = json.loads(split.read_text(encoding="utf-8-sig").splitlines()[0])
        answer, _ = chat(bot, resolve_image(split, first["image"]), question, **GREEDY)
    except (FileNotFoundError, ImageError) as e:  # an image the split names (the model is loaded)
        raise StageFailed(f"eval: {e}; fix eval.split's image paths (relative to the split's folder or the "
                          "one above it) or put the image there") from None
    print(f"[eval] chat about {first['image']}: {question} -> {answer}")
    return {"accuracy": metrics["accuracy"], "n": metrics["n"], "checkpoint": str(checkpoint),
            "chat": {"image": first["image"], "question": question, "answer": answer}}


def chat_command(recipe: Recipe, options: Options) -> dict[str, Any]:
    """`vcla chat`: sampled answers (VisualCLA defaults), repeatable with --seed, or greedy with --greedy."""
    import torch

    from pipelines.preflight import checked_image
    from training.chat import GREEDY, ChatModel, chat

    image = checked_image(options.image, recipe.download.max_image_pixels)
    model, history = _loaded("chat", last_checkpoint(recipe, options), ChatModel.load), None
    if getattr(options, "seed", None) is not None:
        torch.manual_seed(options.seed)
    generation = GREEDY if getattr(options, "greedy", False) else {}
    for text in [options.text] if options.text else _typed_messages():
        response, history = chat(model, image, text, history, **generation)
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


def _loaded(command: str, checkpoint: Path, load: Callable[[Path], Any]) -> Any:
    """`load(checkpoint)`, with a checkpoint whose files (or the model folders it names) are gone or
    unsafe reported as StageFailed naming them."""
    from training.checkpoint import UnsafeCheckpointError

    check_checkpoint_chain(command, checkpoint)
    try:
        return load(checkpoint)
    except (FileNotFoundError, UnsafeCheckpointError) as e:
        raise StageFailed(f"{command}: cannot load {checkpoint}: {e}") from None


def check_checkpoint_chain(command: str, checkpoint: Path) -> None:
    """StageFailed naming the first folder a stage folder loads from that is gone: the stages it
    starts from (`stage.json` "init_from", in turn) and their base ("base"), as `load_stage` follows
    them. Reads `stage.json` files only: cheap enough for the pre-flight."""
    from training.checkpoint import STAGE_FILE, read_stage, resolve_stored

    folder = Path(checkpoint)
    for _ in range(64):  # a chain that loops is not followed for ever
        if not (folder / STAGE_FILE).is_file():
            return  # a merged export, or a folder `last_checkpoint` already refused
        try:
            meta = read_stage(folder)
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:
            raise StageFailed(f"{command}: {folder / STAGE_FILE}: not readable ({e}); train that stage again") from None
        key = "init_from" if meta.get("init_from") else "base" if meta.get("base") else None
        if key is None:
            return  # built from the model paths in its config.json: the loader names a missing one
        target = Path(resolve_stored(folder, meta[key]))
        present = (target / STAGE_FILE).is_file() if key == "init_from" else target.is_dir()
        if not present:
            raise StageFailed(
                f"{command}: cannot load {checkpoint}: it builds on {target} ({folder / STAGE_FILE} \"{key}\": "
                f"{meta[key]!r}), which is not there; copy or move the stage folders together with train/base/ "
                "(the whole train/ or run folder: stored paths are relative to it), or pass --checkpoint DIR")
        if key == "base":
            return
        folder = target


def export_command(recipe: Recipe, options: Options) -> dict[str, Any]:
    from training.export import export

    checkpoint = last_checkpoint(recipe, options)
    out = options.out or recipe.run_dir / "export" / f"{checkpoint.name}-{options.format}"
    try:
        folder = _loaded("export", checkpoint, lambda c: export(c, options.format, out))
    except ValueError as e:  # export's refusals ("llava-hf export needs a linear or mlp2x_gelu connector ...")
        hint = "" if options.format == "merged" else "; `--format merged` exports any checkpoint"
        raise StageFailed(f"export: {checkpoint}: {e}{hint}") from None
    print(f"[export] {folder}")
    return {"folder": str(folder)}


_DATA_CODE = ("pipelines/stages.py", "pipelines/io.py", "templates/schema.py")
STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("demo-data", _demo_data, lambda r: Path(r.demo.output_dir) if r.demo else None,
          lambda r: r.demo, ("pipelines/demo",), None),
    Stage("download", _download, lambda r: r.run_dir / "download",
          lambda r: (r.sources, r.download), _DATA_CODE + ("pipelines/download.py", "pipelines/images.py",
                                                          "pipelines/sources"), "demo-data"),
    Stage("translate", _translate, lambda r: r.run_dir / "translate",
          lambda r: r.translator, _DATA_CODE + ("pipelines/translate.py", "translators"), "download"),
    Stage("render", _render, lambda r: r.run_dir / "render",
          lambda r: (r.render, r.publish.license), _DATA_CODE + ("pipelines/render.py", "pipelines/shards.py",
                                                                 "pipelines/card.py", "pipelines/rejects.py",
                                                                 "templates"), "translate"),
    Stage("publish", _publish, lambda r: None, lambda r: r.publish, ("pipelines/publish.py",), "render"),
    Stage("train", _train, lambda r: r.run_dir / "train", lambda r: (r.model, r.stages, r.seed),
          ("training", "templates"), "render"),
    Stage("eval", _eval, lambda r: r.run_dir / "eval", lambda r: r.eval, ("training", "templates"), "train"),
)}
PIPELINE = tuple(STAGES)
