"""A circuit breaker per upstream: fail fast while an upstream is down, probe it to recover.

A small state machine rather than a library: the hot path needs one comparison when closed, and
the breaker must never hold a lock across a request. States:

- closed: requests pass; `failure_threshold` consecutive failures open the circuit.
- open: requests fail fast (503 + Retry-After) for `recovery_seconds`.
- half-open: one probe request passes; success closes the circuit, failure reopens it. A probe
  that never reports (its client went away) is given up after `recovery_seconds`.

Every breaker's state is the gauge `gateway.circuit_breaker.state` (1 for the current state of
each upstream's breaker, 0 for the others), read when metrics are collected: nothing is
recorded on the request path.
"""

from __future__ import annotations

import enum
import math
import time
import weakref
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        upstream: str,
        failure_threshold: int = 5,
        recovery_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at = 0.0
        _breakers.add(self)

    @property
    def state(self) -> BreakerState:
        return self._state

    def observed_state(self) -> BreakerState:
        """The state as an operator should see it, without changing it: an open circuit whose
        recovery time is over lets the next request probe, so it is half-open already (the
        state machine only moves there when that request arrives)."""
        if self._state is BreakerState.OPEN and (
            self._clock() - self._opened_at >= self.recovery_seconds
        ):
            return BreakerState.HALF_OPEN
        return self._state

    def retry_after(self) -> int | None:
        """None when a request may go ahead; else whole seconds to wait before trying again."""
        if self._state is BreakerState.CLOSED:
            return None
        now = self._clock()
        if self._state is BreakerState.OPEN:
            remaining = self._opened_at + self.recovery_seconds - now
            if remaining > 0:
                return max(1, math.ceil(remaining))
            self._state = BreakerState.HALF_OPEN
            self._probe_started_at = now
            return None  # this request is the probe
        # Half-open: one probe at a time, unless the last one was abandoned.
        if now - self._probe_started_at >= self.recovery_seconds:
            self._probe_started_at = now
            return None
        return max(1, math.ceil(self.recovery_seconds))

    def record_success(self) -> None:
        self._failures = 0
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._failures += 1
        if self._failures >= self.failure_threshold:
            self._open()

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._failures = 0


_breakers: weakref.WeakSet[CircuitBreaker] = weakref.WeakSet()


def _states(_: CallbackOptions) -> Iterable[Observation]:
    # Every state of every breaker, 1 or 0: a state no longer reported would linger at its last
    # value in the collector's Prometheus exporter until it expires.
    for breaker in list(_breakers):
        current = breaker.observed_state()
        for state in BreakerState:
            yield Observation(
                int(state is current), {"gateway.upstream": breaker.upstream, "state": state.value}
            )


metrics.get_meter("mesh_gateway").create_observable_gauge(
    "gateway.circuit_breaker.state",
    callbacks=[_states],
    unit="{state}",
    description="Circuit breaker state per upstream: 1 for the current state, 0 for the others.",
)
