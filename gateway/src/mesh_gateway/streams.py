"""Caps on long-lived streams (event streams and WebSockets, counted together) at the edge:
room in this process (a count in memory), then a lease of its user across every worker and
replica — a member of `<RATE_LIMIT_KEY_PREFIX>:streams:<user>` in the rate-limit storage,
scored by its expiry in Redis' own clock, so a dead process's leases lapse; in this process's
memory while that storage does not answer. Only streams pay for the lease; ordinary requests
never reach this module. Over a cap the new stream is refused (docs/gateway.md, "Streams").
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mesh_gateway.edge import POLICY_VIOLATION, TRY_AGAIN_LATER, Refusal
from mesh_gateway.settings import GatewaySettings
from meshkit.ratelimit import (
    MEMORY,
    STORAGE_ERRORS,
    StorageFallback,
    redis_client,
    storage_scheme,
    watch_storage,
)
from meshkit.resources import count_refusal, watch_streams

logger = logging.getLogger("mesh_gateway.streams")

StreamKind = Literal["sse", "websocket"]

# KEYS[1]: the user's leases. ARGV: cap, lease life (ms), the new lease's id.
# Answers {1, held} when granted, {0, held} when the user already holds the cap.
_ACQUIRE = """
local now = redis.call('TIME')
now = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZCARD', KEYS[1])
if held >= tonumber(ARGV[1]) then
  return {0, held}
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, held + 1}
"""

# KEYS: the users' lease sets. ARGV[1]: lease life (ms); ARGV[2]: 'restore' to add the leases
# that are gone too; ARGV[2 + i]: the lease in KEYS[i]. Extends the leases that are still there;
# answers the positions of those that were gone (expired during a storage outage longer than
# their life, or a restarted Redis).
_RENEW = """
local now = redis.call('TIME')
local expiry = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[1])
local missing = {}
for i, key in ipairs(KEYS) do
  if ARGV[2] == 'restore' or redis.call('ZSCORE', key, ARGV[i + 2]) then
    redis.call('ZADD', key, expiry, ARGV[i + 2])
    redis.call('PEXPIRE', key, ARGV[1])
  else
    missing[#missing + 1] = i
  end
end
return missing
"""


@dataclass(frozen=True, slots=True)
class Lease:
    user: str
    id: str
    shared: bool  # in the shared storage (else in this process's memory)


@dataclass(frozen=True, slots=True)
class StreamTicket:
    """An admitted stream: what closing it gives back."""

    kind: StreamKind
    lease: Lease | None  # None without a per-user cap


class UserStreamLeases:
    """Leases of open streams per user: in the shared storage, or in this process's memory
    while that storage does not answer."""

    name = "gateway-streams"

    def __init__(self, settings: GatewaySettings) -> None:
        self.limit = settings.stream_limit_per_user
        self.lease_seconds = settings.stream_lease_seconds
        self._ttl_ms = int(self.lease_seconds * 1000)
        self._key_prefix = settings.rate_limit_key_prefix
        self._fallback = StorageFallback(
            retry_seconds=settings.rate_limit_storage_retry_seconds,
            clock=time.monotonic,
            log=logger,
            lost="stream-lease storage unreachable (%s): streams are counted per user in this "
            "process until it answers again (tried every %s s)",
            back="stream-lease storage answers again: streams are counted in it again",
        )
        self._local: dict[str, set[str]] = {}
        self._held: dict[str, str] = {}  # shared leases of this process: lease -> key
        self._redis: Any = None
        uri = settings.rate_limit_storage_uri
        if storage_scheme(uri) != MEMORY:
            self._redis = redis_client(uri, timeout=settings.rate_limit_storage_timeout)
            self._acquire_script = self._redis.register_script(_ACQUIRE)
            self._renew_script = self._redis.register_script(_RENEW)
        watch_storage(self)

    @property
    def available(self) -> bool:
        """False while this process counts streams on its own because the storage failed."""
        return self._fallback.available

    def key(self, user: str) -> str:
        return f"{self._key_prefix}:streams:{user}"

    def close(self) -> None:
        if self._redis is not None:
            self._redis.connection_pool.disconnect()

    async def acquire(self, user: str) -> Lease | None:
        """A lease for one more stream of `user`, or None when the user holds the cap."""
        lease = uuid.uuid4().hex
        if self._redis is not None and self._fallback.try_shared():
            key = self.key(user)
            try:
                granted, _ = await self._acquire_script(
                    keys=[key], args=[self.limit, self._ttl_ms, lease]
                )
            except STORAGE_ERRORS as exc:
                self._fallback.failed(str(exc) or type(exc).__name__)
            else:
                self._fallback.answered()
                if not granted:
                    return None
                self._held[lease] = key
                return Lease(user, lease, shared=True)
        leases = self._local.setdefault(user, set())
        if len(leases) >= self.limit:
            return None
        leases.add(lease)
        return Lease(user, lease, shared=False)

    async def release(self, lease: Lease) -> None:
        if not lease.shared:
            leases = self._local.get(lease.user)
            if leases is not None:
                leases.discard(lease.id)
                if not leases:
                    del self._local[lease.user]
            return
        # Forgotten first, so a renewal running meanwhile does not bring it back.
        key = self._held.pop(lease.id, None)
        if key is None or self._redis is None:
            return
        try:
            await self._redis.zrem(key, [lease.id])
        except STORAGE_ERRORS as exc:
            # Not renewed any more: it stops counting within the lease's life.
            logger.info("stream lease not removed (%s); it expires by itself", exc)

    async def renew(self) -> None:
        """Extends every shared lease this process holds (one script for all of them)."""
        held = list(self._held.items())
        if not held or self._redis is None:
            return
        keys = [key for _, key in held]
        leases = [lease for lease, _ in held]
        try:
            missing = await self._renew_script(keys=keys, args=[self._ttl_ms, "", *leases])
            # Those still held (not released meanwhile) are still-open streams: counted again.
            lost = [held[int(i) - 1] for i in missing]
            lost = [(lease, key) for lease, key in lost if lease in self._held]
            if lost:
                await self._renew_script(
                    keys=[key for _, key in lost],
                    args=[self._ttl_ms, "restore", *(lease for lease, _ in lost)],
                )
        except STORAGE_ERRORS as exc:
            self._fallback.failed(str(exc) or type(exc).__name__)
        else:
            self._fallback.answered()

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self.renew()
            except Exception:
                # A renewal that stopped for good would let every lease of this process lapse.
                logger.exception("renewing stream leases failed; trying again next period")


class StreamGate:
    """What a new stream must pass: room in this process, then a lease of its user."""

    def __init__(self, *, limit_per_process: int, leases: UserStreamLeases | None) -> None:
        self._limit = limit_per_process
        self._leases = leases
        self._open: dict[str, int] = {"sse": 0, "websocket": 0}
        self._total = 0
        self.process_full = Refusal(
            503,
            f"This gateway process already holds {limit_per_process} open streams, its "
            "most; try again shortly.",
            {"Retry-After": "5"},
            close_code=TRY_AGAIN_LATER,
            close_reason="too many open streams here; try again later",
        )
        self.user_full: Refusal | None = None
        if leases is not None:
            self.user_full = Refusal(
                429,
                f"Too many open streams: one user may hold {leases.limit} event streams and "
                "WebSockets at once; close one before opening another.",
                {"Retry-After": str(max(1, round(leases.lease_seconds)))},
                close_code=POLICY_VIOLATION,
                close_reason=f"too many open streams (at most {leases.limit} per user)",
            )
        watch_streams(self)

    @property
    def max_streams(self) -> int:
        return self._limit

    def open_streams(self) -> Mapping[str, int]:
        return dict(self._open)

    async def open(self, user: str, kind: StreamKind) -> StreamTicket | Refusal:
        if self._total >= self._limit:
            count_refusal("stream_process_limit")
            return self.process_full
        # Counted before the lease is asked for, so streams opening meanwhile see it.
        self._opened(kind, 1)
        if self._leases is None:
            return StreamTicket(kind, None)
        try:
            lease = await self._leases.acquire(user)
        except BaseException:
            self._opened(kind, -1)
            raise
        if lease is None:
            self._opened(kind, -1)
            count_refusal("stream_user_limit")
            assert self.user_full is not None
            return self.user_full
        return StreamTicket(kind, lease)

    async def close(self, ticket: StreamTicket) -> None:
        self._opened(ticket.kind, -1)
        if self._leases is not None and ticket.lease is not None:
            await self._leases.release(ticket.lease)

    def _opened(self, kind: StreamKind, change: int) -> None:
        self._open[kind] += change
        self._total += change
