"""Which suites run on which stage checkpoints, and what happens when one cannot run."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common.files import atomic_open
from common.layout import STAGE_FILE
from pipelines.core.errors import StepFailed
from pipelines.recipe import Recipe
from pipelines.steps.evaluate.suites import SuiteError, dump, run_suite


def stages_for(recipe: Recipe, kind: str, named: list[str] | None) -> list[str]:
    """A suite's stages: as named, else captions on the first stage, every other kind on the last."""
    stages = list(recipe.stages)
    if named is not None:
        unknown = [s for s in named if s not in stages]
        if unknown:
            raise StepFailed(f"eval.suites: stages {unknown} are not stages of this recipe ({stages})")
        return named
    return stages[:1] if kind == "caption" else stages[-1:]


def run_suites(recipe: Recipe, options: Any, bot_for: Callable[[Path], Any], out_dir: Path) -> list[dict]:
    """One result row per (suite, stage): metrics, or the reason it could not run. `--checkpoint`
    evaluates that folder on every suite."""
    plan: list[tuple[str, str, Path]] = []
    for name, cfg in recipe.eval.suites.items():
        if options.checkpoint:
            plan.append((name, Path(options.checkpoint).name, Path(options.checkpoint)))
            continue
        for stage in stages_for(recipe, cfg.kind, cfg.stages):
            if getattr(options, "stage", None) in (None, stage):  # `stage`: that stage's suites only
                plan.append((name, stage, recipe.run_dir / "train" / stage))
    plan.sort(key=lambda x: (str(x[2]), x[0]))  # one checkpoint loaded at a time
    results = []
    for name, stage, checkpoint in plan:
        cfg = recipe.eval.suites[name]
        row: dict[str, Any] = {"suite": name, "kind": cfg.kind, "stage": stage, "path": cfg.path}
        started = time.perf_counter()
        try:
            if not (checkpoint / STAGE_FILE).is_file():
                raise SuiteError(f"no trained stage at {checkpoint}")
            metrics, predictions = run_suite(name, cfg, bot_for(checkpoint), recipe)
            row["metrics"] = metrics
            with atomic_open(out_dir / "suites" / f"{name}.{stage}.jsonl", "w", encoding="utf-8") as f:
                f.write(dump(predictions))
        except SuiteError as e:
            if cfg.required:
                raise StepFailed(f"eval: {e} (the suite is required: eval.suites.{name}.required)") from None
            row["error"] = str(e)
            print(f"[eval] suite {name} on {stage} could not run: {e}")
        row["seconds"] = round(time.perf_counter() - started, 1)
        results.append(row)
    return results
