"""Where parallel work runs: the recipe's `task_runner` (threads, Dask, Ray) under Prefect.

Steps hand their parallel parts to `pipelines.core.parallel.map_in_tasks`, which submits them to
the runner chosen here.
"""

from __future__ import annotations

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
    if cfg.address:
        return RayTaskRunner(address=cfg.address)
    # A local cluster the size the recipe says (Ray takes every core otherwise), without its dashboard.
    return RayTaskRunner(init_kwargs={"num_cpus": cfg.max_workers or 2, "include_dashboard": False})
