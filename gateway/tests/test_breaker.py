"""The circuit breaker's state machine, on a clock the test moves."""

from __future__ import annotations

from mesh_gateway.breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker(failure_threshold=3, recovery_seconds=10.0, clock=clock)


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
