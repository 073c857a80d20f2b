"""Failed-login limits per email and per client address (`limits`, moving window).

With the default memory storage each process counts on its own; several replicas must share a
Redis storage (`RATE_LIMIT_STORAGE_URI=redis://…`) for the limit to hold across them.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.aio.strategies import MovingWindowRateLimiter
from limits.storage import storage_from_string

from meshkit.problems import TooManyRequestsError


class LoginLimiter:
    def __init__(self, *, limit: str, storage_uri: str) -> None:
        uri = storage_uri if storage_uri.startswith("async+") else f"async+{storage_uri}"
        self._limiter = MovingWindowRateLimiter(storage_from_string(uri))
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
            if not await self._limiter.test(self._item, namespace, key):
                stats = await self._limiter.get_window_stats(self._item, namespace, key)
                raise TooManyRequestsError(
                    "Too many failed login attempts; try again later.",
                    retry_after_seconds=math.ceil(stats.reset_time - time.time()),
                )

    async def record_failure(self, *, email: str, client: str | None) -> None:
        for namespace, key in self._keys(email, client):
            await self._limiter.hit(self._item, namespace, key)
