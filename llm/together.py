"""Many requests at once, results in order: the one way the client layer's users fan out."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def all_in_order(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await every one at once (the client's limits decide how many requests are in flight) and return
    their results in order. The first error cancels the rest and is raised as itself, not inside the
    TaskGroup's exception group (an `EndpointError` reads as the endpoint's message)."""
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(a) for a in awaitables]
    except BaseExceptionGroup as group:
        raise _first(group) from None
    return [t.result() for t in tasks]


def _first(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first
