"""The circuit breaker's state machine, on a clock the test moves, and its state gauge."""

from __future__ import annotations

import uuid

from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from mesh_gateway.breaker import BreakerState, CircuitBreaker
from meshdev.pytest_plugin import metric_points


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock, upstream: str = "orders") -> CircuitBreaker:
    return CircuitBreaker(
        upstream=upstream, failure_threshold=3, recovery_seconds=10.0, clock=clock
    )


def test_it_opens_only_after_consecutive_failures() -> None:
    breaker = _breaker(Clock())
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state.value == BreakerState.CLOSED.value
    assert breaker.retry_after() is None

    breaker.record_failure()

    assert breaker.state.value == BreakerState.OPEN.value
    assert breaker.retry_after() == 10


def test_an_open_circuit_lets_one_probe_through_after_the_recovery_time() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()

    clock.now += 7.5
    assert breaker.retry_after() == 3
    clock.now += 2.5
    assert breaker.retry_after() is None  # the probe
    assert breaker.state.value == BreakerState.HALF_OPEN.value
    assert breaker.retry_after() == 10  # others wait for the probe's outcome


def test_a_successful_probe_closes_and_a_failed_one_reopens() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    assert breaker.retry_after() is None
    breaker.record_failure()
    assert breaker.state.value == BreakerState.OPEN.value
    assert breaker.retry_after() == 10

    clock.now += 10
    assert breaker.retry_after() is None
    breaker.record_success()

    assert breaker.state.value == BreakerState.CLOSED.value
    assert breaker.retry_after() is None


def test_an_abandoned_probe_is_replaced_after_the_recovery_time() -> None:
    clock = Clock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.record_failure()
    clock.now += 10
    assert breaker.retry_after() is None  # a probe that never reports back

    clock.now += 10

    assert breaker.retry_after() is None


def _gauge(reader: InMemoryMetricReader, upstream: str) -> dict[str, int]:
    return {
        str(point.attributes["state"]): int(point.value)
        for point in metric_points(reader, "gateway.circuit_breaker.state")
        if point.attributes["gateway.upstream"] == upstream
    }


def test_the_state_gauge_reports_every_state_of_each_upstream(
    metric_reader: InMemoryMetricReader,
) -> None:
    clock = Clock()
    upstream = f"upstream-{uuid.uuid4().hex[:8]}"
    breaker = _breaker(clock, upstream)

    assert _gauge(metric_reader, upstream) == {"closed": 1, "open": 0, "half-open": 0}
    for _ in range(3):
        breaker.record_failure()
    assert _gauge(metric_reader, upstream) == {"closed": 0, "open": 1, "half-open": 0}


def test_the_gauge_shows_an_open_circuit_due_for_a_probe_as_half_open_without_moving_it(
    metric_reader: InMemoryMetricReader,
) -> None:
    """With no traffic the state machine stays open until a request comes; the operator sees
    what the next request will meet."""
    clock = Clock()
    upstream = f"upstream-{uuid.uuid4().hex[:8]}"
    breaker = _breaker(clock, upstream)
    for _ in range(3):
        breaker.record_failure()

    clock.now += 10

    assert _gauge(metric_reader, upstream) == {"closed": 0, "open": 0, "half-open": 1}
    assert breaker.state.value == BreakerState.OPEN.value
    assert breaker.retry_after() is None  # the probe still goes through
