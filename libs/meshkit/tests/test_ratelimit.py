"""Rate-limit counters: shared in the machine's real Redis (under a key prefix of the test's own,
deleted afterwards), and counted per process while Redis is out of reach — outages made by a
fault proxy in front of it, never by touching the machine's Redis."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import RateLimiter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from pydantic import ValidationError

from meshdev.faults import TcpProxy
from meshdev.processes import free_port
from meshdev.pytest_plugin import metric_points
from meshdev.redis import key_prefix, keys_under, redis_url
from meshkit.ratelimit import RateLimitStorageSettings, SharedRateLimiter

THREE_A_MINUTE = parse("3/minute")


async def _hit(limiter: RateLimiter, item: RateLimitItem, key: str) -> bool:
    return await limiter.hit(item, "test", key)


async def _hits(counters: SharedRateLimiter, count: int, key: str = "client") -> list[bool]:
    return [await counters.run(_hit, THREE_A_MINUTE, key) for _ in range(count)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with key_prefix("meshkit-test") as name:
        yield name


@pytest.fixture
def limiters() -> Iterator[list[SharedRateLimiter]]:
    """Every limiter a test makes, its connections closed afterwards."""
    made: list[SharedRateLimiter] = []
    yield made
    for limiter in made:
        limiter.close()


@pytest.fixture
def counters(limiters: list[SharedRateLimiter]) -> Callable[..., SharedRateLimiter]:
    """`counters(url, prefix, **options)`: a limiter, as one process would have it."""

    def make(
        url: str, prefix: str, timeout: float = 0.1, retry_seconds: float = 5, **options: Any
    ) -> SharedRateLimiter:
        options.setdefault("name", f"test-{uuid.uuid4().hex[:8]}")
        options.setdefault("strategy", "sliding-window-counter")
        storage = RateLimitStorageSettings(
            service_name="test",
            rate_limit_storage_uri=url,
            rate_limit_key_prefix=prefix,
            rate_limit_storage_timeout=timeout,
            rate_limit_storage_retry_seconds=retry_seconds,
        )
        limiter = SharedRateLimiter(storage, **options)
        limiters.append(limiter)
        return limiter

    return make


Counters = Callable[..., SharedRateLimiter]


async def test_processes_sharing_a_redis_storage_share_one_count(
    prefix: str, counters: Counters
) -> None:
    first, second = counters(redis_url(), prefix), counters(redis_url(), prefix)

    assert await _hits(first, 2) == [True, True]
    assert await _hits(second, 2) == [True, False]
    assert await keys_under(prefix), "the counters live in Redis, under the prefix"


async def test_with_the_memory_storage_each_process_counts_alone(counters: Counters) -> None:
    first, second = counters("memory://", "unused"), counters("memory://", "unused")

    assert await _hits(first, 3) == [True] * 3
    assert await _hits(second, 3) == [True] * 3
    assert (first.available, second.available) == (True, True)


async def test_a_refused_storage_is_replaced_by_a_count_per_process(
    prefix: str, redis_link: TcpProxy, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = counters(redis_url(port=redis_link.port), prefix)
    assert await _hits(limiter, 1) == [True]

    await redis_link.cut()
    with caplog.at_level(logging.INFO, logger="meshkit.ratelimit"):
        during = await _hits(limiter, 4, key="abuser")

    # Still answered, and the one abusive client is still limited, by this process alone.
    assert during == [True, True, True, False]
    assert limiter.available is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning per outage, not one per request"
    assert "counts in this process" in warnings[0].getMessage()


async def test_a_storage_that_never_answers_delays_one_request_by_the_timeout_at_most(
    prefix: str, redis_link: TcpProxy, counters: Counters
) -> None:
    limiter = counters(redis_url(port=redis_link.port), prefix, timeout=0.2, retry_seconds=60)
    assert await _hits(limiter, 1) == [True]  # a pooled connection, before the black hole

    await redis_link.blackhole()
    started = time.monotonic()
    first = await _hits(limiter, 1)
    waited = time.monotonic() - started
    started = time.monotonic()
    following = await _hits(limiter, 20, key="other")
    following_took = time.monotonic() - started

    assert first == [True]
    assert limiter.available is False
    # Generous bounds: a hung storage costs one request its timeout, not every request.
    assert waited < 2.0
    assert following_took < 2.0
    assert following.count(False) == 17  # counted per process meanwhile


def _retrying_on_a_clock(
    counters: Counters, url: str, prefix: str, strategy: str
) -> tuple[SharedRateLimiter, Clock]:
    """A limiter that tries its storage again every 5 s of a clock the test moves."""
    clock = Clock()
    return counters(url, prefix, strategy=strategy, retry_seconds=5, clock=clock), clock


async def test_counting_returns_to_the_shared_storage_when_it_answers_again(
    prefix: str, redis_link: TcpProxy, counters: Counters, caplog: pytest.LogCaptureFixture
) -> None:
    limiter, clock = _retrying_on_a_clock(
        counters, redis_url(port=redis_link.port), prefix, "moving-window"
    )
    await redis_link.cut()
    assert await _hits(limiter, 1) == [True]
    assert limiter.available is False

    await redis_link.restore()
    clock.now += 4  # within the retry period: not tried yet
    assert await _hits(limiter, 1) == [True]
    assert limiter.available is False
    assert await keys_under(prefix) == []

    clock.now += 2
    with caplog.at_level(logging.INFO, logger="meshkit.ratelimit"):
        assert await _hits(limiter, 1) == [True]
    assert limiter.available is True
    assert [r.getMessage() for r in caplog.records if "answers again" in r.getMessage()]
    # Shared again: the count is in Redis, where another process sees it.
    assert await keys_under(prefix)
    other = counters(redis_url(), prefix, strategy="moving-window")
    assert await _hits(other, 3) == [True, True, False]


async def test_one_probe_per_retry_period_while_the_storage_is_down(
    prefix: str, redis_link: TcpProxy, counters: Counters
) -> None:
    limiter, clock = _retrying_on_a_clock(
        counters, redis_url(port=redis_link.port), prefix, "fixed-window"
    )
    await redis_link.cut()
    probes = 0

    async def decide(counting: RateLimiter) -> bool:
        nonlocal probes
        if not isinstance(counting.storage, MemoryStorage):
            probes += 1
        return await counting.hit(THREE_A_MINUTE, "test", "probe")

    for _ in range(3):
        await limiter.run(decide)
    assert probes == 1
    clock.now += 5
    for _ in range(3):
        await limiter.run(decide)
    assert probes == 2


async def test_the_availability_gauge_says_which_processes_count_alone(
    prefix: str, counters: Counters, metric_reader: InMemoryMetricReader
) -> None:
    shared = counters(redis_url(), prefix)
    down = counters(f"redis://127.0.0.1:{free_port()}/0", prefix)
    await _hits(shared, 1)
    await _hits(down, 1)

    points = {
        p.attributes["rate_limit.limiter"]: p.value
        for p in metric_points(metric_reader, "rate_limit.storage.available")
    }

    assert points[shared.name] == 1
    assert points[down.name] == 0


def test_unknown_storages_are_refused_at_start() -> None:
    with pytest.raises(ValidationError, match="storage URI"):
        RateLimitStorageSettings(service_name="s", rate_limit_storage_uri="memcached://cache:11211")
    settings = RateLimitStorageSettings(
        service_name="s", rate_limit_storage_uri="redis://redis:6379/0"
    )
    assert settings.rate_limit_key_prefix == "mesh"
