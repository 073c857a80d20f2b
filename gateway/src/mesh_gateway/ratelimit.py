"""Per-client rate limits at the edge, with the `limits` library.

The counters are `meshkit.ratelimit`'s: per process with `memory://`, shared by every worker and
replica with `RATE_LIMIT_STORAGE_URI=redis://…`, and counted in the process's own memory while
that Redis does not answer (docs/gateway.md, "Rate limits across replicas").
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.aio.strategies import RateLimiter

from meshkit.ratelimit import SharedRateLimiter

NAMESPACE = "gateway"


@dataclass(frozen=True, slots=True)
class RateLimitDecision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> list[tuple[bytes, bytes]]:
        """`RateLimit-*` (IETF httpapi draft) and, when refused, `Retry-After`."""
        headers = [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(self.reset_seconds).encode()),
        ]
        if not self.allowed:
            headers.append((b"retry-after", str(max(1, self.reset_seconds)).encode()))
        return headers


class ClientRateLimiter:
    def __init__(self, *, limits: str, counters: SharedRateLimiter) -> None:
        self._counters = counters
        self._items: list[RateLimitItem] = parse_many(limits)
        if not self._items:
            raise ValueError(f"no rate limit in {limits!r}")

    async def hit(self, client_key: str) -> RateLimitDecision:
        """Counts one request of `client_key` against every limit; the tightest one answers."""
        return await self._counters.run(self._hit, client_key)

    async def _hit(self, limiter: RateLimiter, client_key: str) -> RateLimitDecision:
        decision: RateLimitDecision | None = None
        for item in self._items:
            allowed = await limiter.hit(item, NAMESPACE, client_key)
            stats = await limiter.get_window_stats(item, NAMESPACE, client_key)
            candidate = RateLimitDecision(
                allowed=allowed,
                limit=item.amount,
                remaining=stats.remaining,
                reset_seconds=max(0, math.ceil(stats.reset_time - time.time())),
            )
            if not allowed:
                return candidate
            if decision is None or candidate.remaining < decision.remaining:
                decision = candidate
        assert decision is not None
        return decision
