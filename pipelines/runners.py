"""Where parallel work runs: the recipe's `task_runner` (threads, Dask, Ray) under Prefect.

Stages hand their parallel parts to `map_in_tasks`; inside a flow each part becomes a Prefect
task on the flow's task runner (nested submissions from a stage task reach the same runner),
outside a flow it is a plain loop. Results come back in input order either way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipelines.recipe import RecipeError, TaskRunnerConfig


def task_runner(cfg: TaskRunnerConfig):
    from prefect.task_runners import ThreadPoolTaskRunner

    if cfg.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=cfg.max_workers)
    if cfg.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise RecipeError("task_runner.kind: dask needs prefect-dask (pip install prefect-dask)") from None
        if cfg.address:
            return DaskTaskRunner(address=cfg.address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": cfg.max_workers or 2, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    try:
        from prefect_ray import RayTaskRunner
    except ImportError:
        raise RecipeError("task_runner.kind: ray needs prefect-ray (pip install 'visualcla-forge[ray]')") from None
    return RayTaskRunner(address=cfg.address) if cfg.address else RayTaskRunner()


def map_in_tasks(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """`[fn(x) for x in items]`, as Prefect tasks on the current flow's task runner if in a flow."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return [fn(item) for item in items]
    part = task(fn, name=fn.__name__, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
    return [future.result() for future in part.map(items)]
