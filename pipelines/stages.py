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
PIPELINE = ("demo-data", "download", "translate", "render", "train", "eval")

# Commands whose capability is still missing, with the issue that brings it.
_PENDING = {
    "download": (3, "sources and download"),
    "translate": (4, "translation"),
    "render": (5, "templates, rendering and shards"),
    "train": (6, "trainer"),
    "chat": (6, "trainer"),
    "eval": (6, "trainer"),
    "export": (6, "trainer"),
    "publish": (7, "orchestration and publishing"),
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


IMPLEMENTED: dict[str, StageFn] = {
    "demo-data": _demo_data,
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
