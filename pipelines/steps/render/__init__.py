"""Step `render`: records -> prompt templates -> Parquet shards (`render.py`, `shards.py`), with a
manifest and a Hub dataset card (`card.py`)."""

from __future__ import annotations

from typing import Any

from pipelines.core.parallel import map_in_tasks
from pipelines.core.step import NoOptions, Step
from pipelines.recipe import Recipe
from pipelines.steps.render.render import run_render


def run(recipe: Recipe, options: NoOptions) -> dict[str, Any]:
    return run_render(recipe, recipe.run_dir / "translate", recipe.run_dir / "render", map_in_tasks).to_dict()


STEP = Step("render", run, output=lambda r: r.run_dir / "render", section=lambda r: (r.render, r.publish.license),
            upstream="translate", module=__name__)
