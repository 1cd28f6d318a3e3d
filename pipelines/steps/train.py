"""Step `train`: the recipe's training stages in order (stage 2 starts from stage 1's folder), each
in `train/<stage>/` in the VisualCLA release layout (training/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from common.layout import STAGE_FILE
from pipelines.core.completion import step_storage_errors
from pipelines.core.errors import StepFailed, UsageError
from pipelines.core.step import Step
from pipelines.recipe import Recipe, RecipeError


@dataclass(frozen=True)
class TrainOptions:
    stage: str | None = None
    """Train only this stage (`vcla train --stage`); the step is then not marked done."""
    resume: bool = False
    """Continue from the stage's last checkpoint even if the recipe changed since."""

    @property
    def partial(self) -> bool:
        return self.stage is not None


def check_stage_option(recipe: Recipe, stage: str | None) -> None:
    """UsageError for a `--stage` the recipe does not have."""
    if stage is not None and stage not in recipe.stages:
        raise UsageError(f"--stage {stage}: no such stage in {recipe.file} (stages: {', '.join(recipe.stages)})")


def run(recipe: Recipe, options: TrainOptions) -> dict[str, Any]:
    # training/ is imported here, not at the top: it loads torch and transformers (seconds), which
    # commands that never train (vcla download, the pre-flight) should not wait for.
    from training.build import ModelPathError
    from training.checkpoint import CheckpointWriteError, UnsafeCheckpointError
    from training.run import train_stage

    check_stage_option(recipe, options.stage)
    train_dir, summary = recipe.run_dir / "train", {}
    for name, cfg in recipe.stages.items():
        if options.stage is not None and name != options.stage:
            continue
        init_from = train_dir / cfg.init_from if cfg.init_from else None
        if init_from is not None and not (init_from / STAGE_FILE).is_file():
            raise StepFailed(f"train: stage {name} starts from {cfg.init_from}, which has no checkpoint in "
                             f"{init_from}; train it first (vcla train --stage {cfg.init_from})")
        try:
            with step_storage_errors("train", train_dir / name, CheckpointWriteError):
                metrics = train_stage(recipe.model, name, cfg, recipe.run_dir / "render", train_dir / name,
                                      init_from=init_from, resume=True if options.resume else "auto",
                                      seed=recipe.seed)
        except ModelPathError as e:
            raise RecipeError(f"{recipe.file}: {e}") from None
        except UnsafeCheckpointError as e:
            raise StepFailed(f"train: {e}") from None
        state = "already trained" if metrics.get("skipped") else "trained"
        print(f"[train] {name}: {state}, {metrics.get('steps')} steps, final loss {metrics.get('final_loss')}")
        summary[name] = {k: metrics.get(k) for k in ("steps", "final_loss", "padding_fraction", "train_runtime")}
    return summary


STEP = Step("train", run, output=lambda r: r.run_dir / "train", section=lambda r: (r.model, r.stages, r.seed),
            upstream="render", module=__name__, options=TrainOptions)
