"""`first_completed`: the first task to end ends the others; nothing is left running, and the
caller's task is left as it was (no cancellation pending)."""

from __future__ import annotations

import asyncio

import pytest

from meshkit.concurrency import first_completed


class Side:
    """A task of the group that either returns after `seconds` or raises `error`."""

    def __init__(self, seconds: float = 3600, error: Exception | None = None) -> None:
        self.seconds = seconds
        self.error = error
        self.cancelled = False
        self.done = False

    async def __call__(self) -> None:
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        self.done = True


def _caller_is_clean() -> bool:
    task = asyncio.current_task()
    assert task is not None
    return task.cancelling() == 0 and asyncio.all_tasks() == {task}


async def test_the_first_to_return_cancels_the_others() -> None:
    first, second, third = Side(0.01), Side(), Side()

    await first_completed(first(), second(), third())

    assert first.done
    assert second.cancelled
    assert third.cancelled
    assert _caller_is_clean()


async def test_one_that_raises_cancels_the_others_and_its_error_comes_out() -> None:
    failing, other = Side(0.01, error=ValueError("broken")), Side()

    with pytest.raises(ExceptionGroup) as raised:
        await first_completed(failing(), other())

    assert [str(exc) for exc in raised.value.exceptions] == ["broken"]
    assert other.cancelled
    assert _caller_is_clean()


async def test_cancelling_the_caller_cancels_every_task() -> None:
    first, second = Side(), Side()
    racing = asyncio.create_task(first_completed(first(), second()))
    await asyncio.sleep(0.01)

    racing.cancel()

    with pytest.raises(asyncio.CancelledError):
        await racing
    assert first.cancelled
    assert second.cancelled


async def test_a_timeout_around_it_and_after_it_still_works() -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await first_completed(Side()(), Side()())
    await first_completed(Side(0.01)(), Side()())

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.01):
            await asyncio.sleep(1)
    assert _caller_is_clean()
