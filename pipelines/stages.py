"""The stages of a run, in order, and how the CLI and `build-and-train` invoke them.

A stage is a function `(recipe, args) -> None` that reads the previous stage's folder under
the run folder and writes its own (docs/ARCHITECTURE.md). A capability that is not built
raises `NotBuilt`, so nothing ever pretends to succeed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from pipelines.recipe import Recipe

StageFn = Callable[[Recipe, argparse.Namespace], None]

# build-and-train runs these in order (demo-data only when the recipe has a `demo:` section).
PIPELINE = ("demo-data", "download", "translate", "render", "publish", "train", "eval")

# Commands whose capability is still missing, with the issue that brings it.
_PENDING = {
    "serve": (7, "orchestration and schedules"),
}


class NotBuilt(RuntimeError):
    def __init__(self, stage: str, done: tuple[str, ...] = ()) -> None:
        issue, title = _PENDING[stage]
        msg = f"'{stage}' is not built yet (issue #{issue}, {title}); nothing was done for it"
        if done:
            msg += f". Completed before it: {', '.join(done)}"
        super().__init__(msg)
        self.stage = stage


class StageFailed(RuntimeError):
    """A stage could not finish; the message says which stage and why."""


def _demo_data(recipe: Recipe, args: argparse.Namespace) -> None:
    from pipelines.demo.corpus import generate_demo

    if recipe.demo is None:
        return
    demo = recipe.demo
    manifest = generate_demo(Path(demo.output_dir), demo)
    print(f"[demo-data] {demo.output_dir}: {manifest['counts']['images']} images, "
          f"{manifest['counts']['memory_segments']} memory segments")


def _download(recipe: Recipe, args: argparse.Namespace) -> None:
    from pipelines.download import run_download

    run_download(recipe, recipe.run_dir / "download")


def _translate(recipe: Recipe, args: argparse.Namespace) -> None:
    from pipelines.translate import run_translate

    run_translate(recipe, recipe.run_dir / "download", recipe.run_dir / "translate")


def _render(recipe: Recipe, args: argparse.Namespace) -> None:
    from pipelines.render import run_render

    run_render(recipe, recipe.run_dir / "translate", recipe.run_dir / "render")


def _publish(recipe: Recipe, args: argparse.Namespace) -> None:
    from pipelines.publish import PublishError, run_publish

    if recipe.publish.repo_id is None and args.command == "build-and-train":
        print("[publish] publish.repo_id is not set; nothing to publish")
        return
    try:
        run_publish(recipe, recipe.run_dir / "render", dry_run=getattr(args, "dry_run", False))
    except PublishError as e:
        raise StageFailed(f"publish: {e}") from None


def _train(recipe: Recipe, args: argparse.Namespace) -> None:
    from training.run import train_stage

    wanted = getattr(args, "stage", None)
    if wanted is not None and wanted not in recipe.stages:
        raise StageFailed(f"train: no stage {wanted!r} in {recipe.file} (stages: {', '.join(recipe.stages)})")
    train_dir = recipe.run_dir / "train"
    for name, cfg in recipe.stages.items():
        if wanted is not None and name != wanted:
            continue
        init_from = train_dir / cfg.init_from if cfg.init_from else None
        if init_from is not None and not (init_from / "stage.json").is_file():
            raise StageFailed(f"train: stage {name} starts from {cfg.init_from}, which has no checkpoint in "
                              f"{init_from}; train it first (vcla train --stage {cfg.init_from})")
        metrics = train_stage(recipe.model, name, cfg, recipe.run_dir / "render", train_dir / name,
                              init_from=init_from, resume=getattr(args, "resume", False), seed=recipe.seed)
        state = "already trained" if metrics.get("skipped") else "trained"
        print(f"[train] {name}: {state}, {metrics.get('steps')} steps, final loss {metrics.get('final_loss')}")


def last_checkpoint(recipe: Recipe, args: argparse.Namespace) -> Path:
    """`--checkpoint` if given, else the run's last trained stage."""
    given = getattr(args, "checkpoint", None)
    folder = Path(given) if given else recipe.run_dir / "train" / list(recipe.stages)[-1]
    if not (folder / "stage.json").is_file():
        raise StageFailed(f"{folder}: no trained stage here; run `vcla train` first or pass --checkpoint DIR")
    return folder


def _eval(recipe: Recipe, args: argparse.Namespace) -> None:
    from training.evaluate import evaluate

    if recipe.eval.split is None:
        print("[eval] eval.split is not set; nothing to evaluate")
        return
    recipe.require_files("eval.split")
    checkpoint = last_checkpoint(recipe, args)
    metrics = evaluate(checkpoint, Path(recipe.eval.split), recipe.eval, out=recipe.run_dir / "eval")
    print(f"[eval] {checkpoint.name}: accuracy {metrics['accuracy']:.3f} on {metrics['n']} questions")


def _chat(recipe: Recipe, args: argparse.Namespace) -> None:
    from training.chat import ChatModel, chat

    if args.image is None:
        raise StageFailed("chat: pass --image PATH")
    model = ChatModel.load(last_checkpoint(recipe, args))
    history = None
    messages = [args.text] if args.text else iter(lambda: input("你: "), "")
    for text in messages:
        response, history = chat(model, args.image, text, history)
        print(response)


def _export(recipe: Recipe, args: argparse.Namespace) -> None:
    from training.export import export

    checkpoint = last_checkpoint(recipe, args)
    out = args.out or recipe.run_dir / "export" / f"{checkpoint.name}-{args.format}"
    print(f"[export] {export(checkpoint, args.format, out)}")


IMPLEMENTED: dict[str, StageFn] = {
    "demo-data": _demo_data,
    "download": _download,
    "translate": _translate,
    "render": _render,
    "publish": _publish,
    "train": _train,
    "eval": _eval,
    "chat": _chat,
    "export": _export,
}


def run_one(name: str, recipe: Recipe, args: argparse.Namespace) -> int:
    stage = IMPLEMENTED.get(name)
    if stage is None:
        raise NotBuilt(name)
    stage(recipe, args)
    return 0


def run_all(recipe: Recipe, args: argparse.Namespace) -> int:
    done: list[str] = []
    for name in PIPELINE:
        if name not in IMPLEMENTED:
            raise NotBuilt(name, tuple(done))
        print(f"[build-and-train] {name} ...", flush=True)
        IMPLEMENTED[name](recipe, args)
        done.append(name)
    return 0
