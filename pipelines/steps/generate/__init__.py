"""Step `generate`: Chinese conversation / detail / reasoning records from each image's annotations
(generate.py), with the context per image gathered in contexts.py."""

from pipelines.core.step import Step
from pipelines.steps.generate.generate import GenerateOptions, run_generate


def run(recipe, options: GenerateOptions) -> dict:
    stats = run_generate(recipe, recipe.run_dir / "curate", recipe.run_dir / "generate", estimate=options.estimate)
    return stats.to_dict()


STEP = Step("generate", run, output=lambda r: r.run_dir / "generate", section=lambda r: r.generate,
            upstream="curate", module=__name__, options=GenerateOptions)

__all__ = ["STEP", "GenerateOptions", "run_generate"]
