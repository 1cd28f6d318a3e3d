"""Step `curate`: exact and near-duplicate images, image bounds, caption rules and language, CLIP
similarity, between download and generate (curate.py; per-image work in images.py, per-record in
texts.py, pictures in report.py)."""

from __future__ import annotations

from typing import Any

from pipelines.core.step import NoOptions, Step
from pipelines.recipe import Recipe
from pipelines.steps.curate.curate import run_curate


def run(recipe: Recipe, options: NoOptions) -> dict[str, Any]:
    return run_curate(recipe, recipe.run_dir / "download", recipe.run_dir / "curate").to_dict()


STEP = Step("curate", run, output=lambda r: r.run_dir / "curate", section=lambda r: r.curate,
            upstream="download", module=__name__)

__all__ = ["STEP", "run_curate"]
