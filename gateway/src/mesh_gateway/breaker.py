"""A circuit breaker per upstream: fail fast while an upstream is down, probe it to recover.

A small state machine rather than a library: the hot path needs one comparison when closed, and
the breaker must never hold a lock across a request. States:

- closed: requests pass; `failure_threshold` consecutive failures open the circuit.
- open: requests fail fast (503 + Retry-After) for `recovery_seconds`.
- half-open: one probe request passes; success closes the circuit, failure reopens it. A probe
  that never reports (its client went away) is given up after `recovery_seconds`.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        recovery_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.recovery_seconds = recovery_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_started_at = 0.0

    @property
    def state(self) -> BreakerState:
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
