"""`vcla serve`: the recipe's schedules as Prefect deployments, served until stopped.

    schedules:
      - {flow: download, cron: "0 2 * * *"}     # nightly incremental download
      - {flow: translate, interval_s: 3600}

Each deployment runs the named flow with this recipe, its overrides and run folder.
"""

from __future__ import annotations

from typing import Any

from pipelines.recipe import Recipe, RecipeError


def deployments(recipe: Recipe, spec: dict[str, Any]) -> list:
    from pipelines.orchestration.flows import STEP_FLOWS, build_and_train, with_runner

    flows = {**STEP_FLOWS, "build-and-train": build_and_train}
    check_schedules(recipe)
    out = []
    for i, sched in enumerate(recipe.schedules):
        trigger = {"cron": sched.cron} if sched.cron else {"interval": sched.interval_s}
        out.append(with_runner(flows[sched.flow], spec).to_deployment(
            name=f"{recipe.name}-{sched.flow}-{i}", parameters=spec, tags=["visualcla-forge", recipe.name],
            description=f"{sched.flow} of recipe {recipe.name} ({recipe.file})", **trigger))
    return out


def check_schedules(recipe: Recipe) -> None:
    """RecipeError for a recipe with nothing to serve."""
    if not recipe.schedules:
        raise RecipeError(f"{recipe.file}: schedules: empty; add e.g. `- {{flow: download, cron: \"0 2 * * *\"}}`")


def serve(recipe: Recipe, spec: dict[str, Any]) -> None:
    from prefect import serve as prefect_serve

    from pipelines.orchestration.server import ensure_api

    served = deployments(recipe, spec)  # a recipe without schedules fails here, before any server starts
    ensure_api()
    prefect_serve(*served)
