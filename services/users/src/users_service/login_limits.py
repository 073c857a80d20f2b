"""Failed-login limits per email and per client address (`limits`, moving window).

The counters are `meshkit.ratelimit`'s: per process with `memory://`, shared by every replica
with `RATE_LIMIT_STORAGE_URI=redis://…`, and counted in the process's own memory while that
Redis does not answer (a login is never refused because the counters are unreachable).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.strategies import RateLimiter

from meshkit.problems import TooManyRequestsError
from meshkit.ratelimit import SharedRateLimiter


class LoginLimiter:
    STRATEGY = "moving-window"

    def __init__(self, *, limit: str, counters: SharedRateLimiter) -> None:
        self._counters = counters
        self._item: RateLimitItem = parse(limit)

    @staticmethod
    def _keys(email: str, client: str | None) -> list[tuple[str, str]]:
        keys = [("login-email", email.lower())]
        if client:
            keys.append(("login-client", client))
        return keys

    async def ensure_allowed(self, *, email: str, client: str | None) -> None:
        """Raises 429 while either the email or the client address is over its failure limit."""
        for namespace, key in self._keys(email, client):
            wait = await self._counters.run(self._wait, namespace, key)
            if wait is not None:
                raise TooManyRequestsError(
                    "Too many failed login attempts; try again later.", retry_after_seconds=wait
                )

    async def record_failure(self, *, email: str, client: str | None) -> None:
        for namespace, key in self._keys(email, client):
            await self._counters.run(self._hit, namespace, key)

    async def _wait(self, limiter: RateLimiter, namespace: str, key: str) -> int | None:
        """Seconds until `key` may try again; None while it is under the limit."""
        if await limiter.test(self._item, namespace, key):
            return None
        stats = await limiter.get_window_stats(self._item, namespace, key)
        return math.ceil(stats.reset_time - time.time())

    async def _hit(self, limiter: RateLimiter, namespace: str, key: str) -> None:
        await limiter.hit(self._item, namespace, key)
