"""Step `generate`: Chinese conversation / detail / reasoning records from each image's annotations
(generate.py), with the context per image gathered in contexts.py."""

from __future__ import annotations

from pipelines.core.step import EstimateOptions, Step
from pipelines.recipe import Recipe

GenerateOptions = EstimateOptions


def run(recipe: Recipe, options: GenerateOptions) -> dict:
    # imported here: the openai client takes ~0.5 s to import, and every `vcla` command loads the registry
    from pipelines.steps.generate.generate import run_generate

    stats = run_generate(recipe, recipe.run_dir / "curate", recipe.run_dir / "generate", estimate=options.estimate)
    return stats.to_dict()


STEP = Step("generate", run, output=lambda r: r.run_dir / "generate", section=lambda r: r.generate,
            upstream="curate", module=__name__, options=GenerateOptions)

__all__ = ["STEP", "GenerateOptions"]
