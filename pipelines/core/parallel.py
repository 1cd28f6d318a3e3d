"""`map_in_tasks`: a step's parallel parts as Prefect tasks on the current flow's task runner (the
recipe's `task_runner`: threads, Dask or Ray; nested submissions from a step task reach the same
runner), or a plain loop outside a flow. Results come back in input order either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def map_in_tasks(fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """`[fn(x) for x in items]`, as Prefect tasks on the current flow's task runner if in a flow."""
    from prefect import task
    from prefect.cache_policies import NO_CACHE
    from prefect.context import FlowRunContext, TaskRunContext

    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return [fn(item) for item in items]
    part = task(fn, name=fn.__name__, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
    return [future.result() for future in part.map(items)]
