"""Step `download`: read the recipe's sources (pipelines/sources/) and fetch every image once with
img2dataset (`download.py`; decoding and size checks in `images.py`)."""

from __future__ import annotations

from typing import Any

from pipelines.core.step import NoOptions, Step
from pipelines.recipe import Recipe


def run(recipe: Recipe, options: NoOptions) -> dict[str, Any]:
    from pipelines.steps.download.download import run_download  # img2dataset: 3 s to import; only when run

    return run_download(recipe, recipe.run_dir / "download").to_dict()


STEP = Step("download", run, output=lambda r: r.run_dir / "download", section=lambda r: (r.sources, r.download),
            upstream="demo-data", module=__name__)
