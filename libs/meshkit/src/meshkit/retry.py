"""The mesh's one retry policy, on tenacity: capped exponential backoff with full jitter.

The first attempt is a plain call, so a call that works pays for no retry machinery; tenacity
takes over after a failure worth retrying. The first failure of an outage (one call's run of
failures) is logged as a warning, the ones after it at debug, and its end at info.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from tenacity import RetryCallState, retry_if_exception, stop_after_attempt, stop_never
from tenacity.asyncio import AsyncRetrying
from tenacity.wait import wait_random_exponential

from meshkit.concurrency import first_completed

P = ParamSpec("P")
T = TypeVar("T")


class Retry:
    """Retries the failures `on` names (error types, or a test of the error): after the n-th
    failure it waits a random time up to `min(cap, base * 2 ** (n - 1))` (full jitter, so
    replicas do not retry in step), for `attempts` attempts in all, or until the call succeeds.

    A set `stop` ends the wait at once, and the retrying with the last failure; a set `wake`
    ends the wait, and the next attempt starts at once. Nothing is logged without `logger`;
    `what` names the failure in the log (a function of it: a change of name is a new outage).
    """

    def __init__(
        self,
        *,
        on: type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool],
        base: float,
        cap: float,
        attempts: int | None = None,
        stop: asyncio.Event | None = None,
        wake: asyncio.Event | None = None,
        logger: logging.Logger | None = None,
        what: str | Callable[[BaseException], str] = "",
    ) -> None:
        if isinstance(on, type | tuple):
            types = on
            self.retries: Callable[[BaseException], bool] = lambda exc: isinstance(exc, types)
        else:
            self.retries = on
        self._retry = retry_if_exception(self.retries)
        self._wait = wait_random_exponential(multiplier=base, max=cap)
        self._stop_after = stop_never if attempts is None else stop_after_attempt(attempts)
        self.stop = stop
        self.wake = wake
        self.logger = logger
        self.what = what

    async def __call__(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`fn`'s result, retried as the policy says."""
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            if not self.retries(exc):
                raise
            failure = exc
        return await self.after(failure, fn, *args, **kwargs)

    async def after(
        self,
        failure: BaseException,
        fn: Callable[P, Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Retries `fn`, whose first attempt (the caller's own) failed with `failure`, one of
        the failures this policy retries."""
        named: str | None = None  # the name the outage's last failure was logged with

        def before_sleep(state: RetryCallState) -> None:
            nonlocal failure, named
            assert state.outcome is not None
            failure = state.outcome.exception() or failure
            if self.stop is not None and self.stop.is_set():
                raise failure
            if self.logger is not None:
                what = self.what if isinstance(self.what, str) else self.what(failure)
                level = logging.DEBUG if what == named else logging.WARNING
                named = what
                self.logger.log(
                    level, "%s (%s); retrying in %.1fs", what, failure, state.upcoming_sleep
                )

        async def sleep(seconds: float) -> None:
            events = (event.wait() for event in (self.stop, self.wake) if event is not None)
            await first_completed(asyncio.sleep(seconds), *events)
            if self.stop is not None and self.stop.is_set():
                raise failure

        retrying = AsyncRetrying(
            sleep=sleep,
            stop=self._stop_after,
            wait=self._wait,
            retry=self._retry,
            before_sleep=before_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise failure  # the caller's own attempt, replayed so that tenacity counts it
                result = await fn(*args, **kwargs)
        if named is not None and self.logger is not None:
            attempts = retrying.statistics["attempt_number"]
            self.logger.info("%s; back after %d attempts", named, attempts)
        return result
