"""The retry policy: what it retries, how long it waits, what ends a wait, what it logs."""

from __future__ import annotations

import asyncio
import logging

import pytest

from meshkit.retry import Retry

logger = logging.getLogger("tests.retry")


class Flaky:
    """Fails with `error` the first `failures` times it is called."""

    def __init__(self, failures: int, error: type[Exception] = ConnectionError) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0

    async def __call__(self, answer: str = "ok") -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return answer


def _records(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger.name]


async def test_a_call_that_works_is_called_once_and_logs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = Flaky(0)
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        assert await Retry(on=ConnectionError, base=1, cap=1, logger=logger)(call, "x") == "x"

    assert call.calls == 1
    assert _records(caplog) == []


async def test_failures_it_retries_are_retried_until_the_call_works() -> None:
    call = Flaky(3)

    assert await Retry(on=ConnectionError, base=0.001, cap=0.001)(call) == "ok"
    assert call.calls == 4


async def test_other_failures_are_raised_at_once() -> None:
    call = Flaky(3, error=ValueError)

    with pytest.raises(ValueError, match="failure 1"):
        await Retry(on=ConnectionError, base=0.001, cap=0.001)(call)
    assert call.calls == 1


async def test_a_test_of_the_error_decides_what_is_retried() -> None:
    call = Flaky(2)
    retry = Retry(on=lambda exc: "failure" in str(exc), base=0.001, cap=0.001)

    assert await retry(call) == "ok"
    assert call.calls == 3


async def test_after_the_last_attempt_the_last_failure_is_raised() -> None:
    call = Flaky(5)

    with pytest.raises(ConnectionError, match="failure 3"):
        await Retry(on=ConnectionError, base=0.001, cap=0.001, attempts=3)(call)
    assert call.calls == 3


async def test_after_a_failure_of_the_callers_own_attempt_it_retries_the_rest() -> None:
    call = Flaky(0)
    retry = Retry(on=ConnectionError, base=0.001, cap=0.001, attempts=2)

    assert await retry.after(ConnectionError("the caller's"), call, "again") == "again"
    assert call.calls == 1


async def test_each_wait_is_random_below_a_doubling_bound_and_the_cap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = Flaky(12)
    retry = Retry(on=ConnectionError, base=0.001, cap=0.004, logger=logger, what="down")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        await retry(call)

    waits = [
        r.args[2]
        for r in caplog.records
        if r.name == logger.name and "retrying" in r.msg and isinstance(r.args, tuple)
    ]
    assert len(waits) == 12
    bounds = [min(0.004, 0.001 * 2**n) for n in range(12)]
    assert all(
        isinstance(wait, float) and 0 <= wait <= bound
        for wait, bound in zip(waits, bounds, strict=True)
    )


async def test_one_warning_per_outage_the_retries_at_debug_and_its_end_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    retry = Retry(on=ConnectionError, base=0.001, cap=0.001, logger=logger, what="x is down")
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        await retry(Flaky(4))

    levels = [level for level, _ in _records(caplog)]
    assert levels == [logging.WARNING] + [logging.DEBUG] * 3 + [logging.INFO]
    assert _records(caplog)[0][1].startswith("x is down (failure 1); retrying in ")
    assert _records(caplog)[-1][1] == "x is down; back after 5 attempts"


async def test_a_failure_of_another_name_is_a_new_outage(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def broker_then_database() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ConnectionError("broker")
        if calls <= 4:
            raise OSError("database")

    def what(exc: BaseException) -> str:
        return f"{exc} unavailable"

    retry = Retry(on=OSError, base=0.001, cap=0.001, logger=logger, what=what)
    with caplog.at_level(logging.DEBUG, logger=logger.name):
        await retry(broker_then_database)

    warnings = [message for level, message in _records(caplog) if level == logging.WARNING]
    assert [w.split(" (")[0] for w in warnings] == ["broker unavailable", "database unavailable"]


async def test_a_stop_ends_the_wait_at_once_with_the_last_failure() -> None:
    stop = asyncio.Event()
    call = Flaky(100)
    retry = Retry(on=ConnectionError, base=60, cap=60, stop=stop)

    retrying = asyncio.create_task(retry(call))
    await asyncio.sleep(0.05)  # the first failure, then a wait of up to a minute
    stop.set()

    with pytest.raises(ConnectionError, match="failure 1"):
        async with asyncio.timeout(1):
            await retrying
    assert call.calls == 1  # no attempt after the stop


async def test_a_failure_after_the_stop_is_raised_without_waiting_or_logging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()
    stop.set()
    retry = Retry(on=ConnectionError, base=60, cap=60, stop=stop, logger=logger, what="x")

    with caplog.at_level(logging.DEBUG, logger=logger.name), pytest.raises(ConnectionError):
        async with asyncio.timeout(1):
            await retry(Flaky(1))
    assert _records(caplog) == []


async def test_a_wake_ends_the_wait_and_the_next_attempt_starts_at_once() -> None:
    wake = asyncio.Event()
    call = Flaky(1)
    retry = Retry(on=ConnectionError, base=60, cap=60, stop=asyncio.Event(), wake=wake)

    retrying = asyncio.create_task(retry(call))
    await asyncio.sleep(0.05)
    wake.set()

    async with asyncio.timeout(1):
        assert await retrying == "ok"
    assert call.calls == 2


async def test_cancelling_the_caller_ends_the_wait() -> None:
    retrying = asyncio.create_task(Retry(on=ConnectionError, base=60, cap=60)(Flaky(100)))
    await asyncio.sleep(0.05)
    retrying.cancel()

    with pytest.raises(asyncio.CancelledError):
        await retrying
