"""Structured concurrency for "run these together until the first one ends"."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable


class _EndGroupError(Exception):
    """Raised by the first task to return: it ends the task group."""


async def _end_group_after(awaitable: Awaitable[object]) -> None:
    await awaitable
    raise _EndGroupError


async def first_completed(*awaitables: Awaitable[object]) -> None:
    """Runs `awaitables` as the tasks of one `asyncio.TaskGroup` until the first of them
    returns or raises, then cancels the others and waits for them. What they raised (but
    their cancellation) comes out as an exception group; cancelling the caller cancels them."""
    task = asyncio.current_task()
    assert task is not None
    group = asyncio.TaskGroup()
    try:
        async with group:
            for awaitable in awaitables:
                group.create_task(_end_group_after(awaitable))
    except* _EndGroupError:
        pass
    finally:
        # Python 3.11's TaskGroup leaves its request to cancel this task counted when a task
        # ends the group after its body (CPython gh-116720): withdrawn here, or a later
        # `asyncio.timeout` or task group of this task would take it for a cancellation.
        if getattr(group, "_parent_cancel_requested", False):
            task.uncancel()
