"""Step `demo-data`: the synthetic shapes corpus of a recipe with a `demo:` section (pipelines/demo/)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.core.step import NoOptions, Step
from pipelines.demo.corpus import generate_demo
from pipelines.recipe import Recipe


def run(recipe: Recipe, options: NoOptions) -> dict[str, Any]:
    if recipe.demo is None:
        return {"skipped": "the recipe has no demo section"}
    manifest = generate_demo(Path(recipe.demo.output_dir), recipe.demo, recipe.generate)
    print(f"[demo-data] {recipe.demo.output_dir}: {manifest['counts']['images']} images")
    return {"counts": manifest["counts"]}


STEP = Step("demo-data", run, output=lambda r: Path(r.demo.output_dir) if r.demo else None,
            section=lambda r: (r.demo, r.generate), upstream=None, module=__name__)
