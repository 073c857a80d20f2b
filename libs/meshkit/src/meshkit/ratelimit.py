"""Rate-limit counters shared by every replica, with `limits`, that never take the service down.

`RATE_LIMIT_STORAGE_URI` names the `limits` storage: `memory://` counts in each process,
`redis://host:6379/0` shares one count between all of them. While the shared storage does not
answer, decisions are made on this process's own memory counters, one request per period probes
the storage again, and the change is logged once each way (docs/gateway.md, "Rate limits across
replicas"). `limits` has no fallback of its own: its Redis storage raises `StorageError`
(`wrap_exceptions=True`), or the socket's `OSError` for a reset under a command.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar
from urllib.parse import urlsplit

import coredis
from coredis.exceptions import RedisError
from coredis.retry import NoRetryPolicy
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import STRATEGIES, RateLimiter
from limits.errors import StorageError
from limits.storage import storage_from_string
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from pydantic import Field, field_validator

from meshkit.settings import ServiceSettings

logger = logging.getLogger("meshkit.ratelimit")

P = ParamSpec("P")
T = TypeVar("T")

MEMORY = "memory"
# Memory, and Redis through coredis (limits[async-redis]): TCP, TLS, a Unix socket.
SCHEMES = frozenset({MEMORY, "redis", "rediss", "redis+unix"})
# `limits`' own table of its strategies, by the names the settings use.
_STRATEGIES: Mapping[str, type[RateLimiter]] = STRATEGIES


def storage_scheme(uri: str) -> str:
    return urlsplit(uri).scheme.removeprefix("async+")


class RateLimitStorageSettings(ServiceSettings):
    """Where a service's rate-limit counters live, and how long it waits for them."""

    rate_limit_storage_uri: str = Field(
        default="memory://",
        description="`limits` storage: memory:// (per process) or redis://host:port/db "
        "(shared by every process and replica).",
    )
    rate_limit_key_prefix: str = Field(
        default="mesh",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every counter's key in the shared storage (one per mesh "
        "sharing a Redis).",
    )
    rate_limit_storage_timeout: float = Field(
        default=0.1,
        gt=0,
        le=5,
        description="Seconds to connect to, or wait for an answer of, the shared storage; "
        "past it the request is counted in this process's memory.",
    )
    rate_limit_storage_retry_seconds: float = Field(
        default=5.0,
        gt=0,
        description="While the shared storage is unreachable, how often one request tries it.",
    )

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _known_storage(cls, uri: str) -> str:
        if storage_scheme(uri) not in SCHEMES:
            raise ValueError(f"a storage URI of {sorted(SCHEMES)}, not {uri!r}")
        return uri


class StorageFallback:
    """The shared storage's state as one process sees it: while it does not answer, the caller
    counts in this process's memory, probes it again once per `retry_seconds`, and the change
    is logged once each way (`lost` takes the error and the period; `back` nothing)."""

    def __init__(
        self,
        *,
        retry_seconds: float,
        clock: Callable[[], float],
        log: logging.Logger,
        lost: str,
        back: str,
    ) -> None:
        self.available = True
        self._retry_seconds = retry_seconds
        self._clock = clock
        self._retry_at = 0.0
        self._log = log
        self._lost = lost
        self._back = back

    def try_shared(self) -> bool:
        """Whether to ask the shared storage now: it answers, or its next probe is due."""
        if self.available:
            return True
        now = self._clock()
        if now < self._retry_at:
            return False
        self._retry_at = now + self._retry_seconds  # one probe per period
        return True

    def failed(self, reason: object) -> None:
        self._retry_at = self._clock() + self._retry_seconds
        if self.available:
            self.available = False
            self._log.warning(self._lost, reason, self._retry_seconds)

    def answered(self) -> None:
        if not self.available:
            self.available = True
            self._log.info(self._back)


class SharedRateLimiter:
    """One `limits` strategy over the configured storage, and the same strategy over this
    process's memory for while that storage does not answer."""

    def __init__(
        self,
        storage: RateLimitStorageSettings,
        *,
        name: str,
        strategy: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._strategy = _STRATEGIES[strategy]
        self._local: RateLimiter = self._strategy(MemoryStorage())
        self._shared: RateLimiter | None = None
        self._fallback = StorageFallback(
            retry_seconds=storage.rate_limit_storage_retry_seconds,
            clock=clock,
            log=logger,
            lost=f"rate-limit storage unreachable (%s): {name} counts in this process until it "
            "answers again (tried every %s s)",
            back=f"rate-limit storage answers again: {name} counts in it again",
        )
        uri = storage.rate_limit_storage_uri
        if storage_scheme(uri) != MEMORY:
            self._shared = self._strategy(
                storage_from_string(
                    f"async+{uri.removeprefix('async+')}",
                    wrap_exceptions=True,
                    key_prefix=storage.rate_limit_key_prefix,
                    # coredis: bounded waits, and no retries of its own (the fallback is the retry).
                    connect_timeout=storage.rate_limit_storage_timeout,
                    stream_timeout=storage.rate_limit_storage_timeout,
                    retry_policy=_no_retries(),
                )
            )
        watch_storage(self)

    def close(self) -> None:
        """Closes the connections to the shared storage (its pool opens new ones if used again):
        coredis' pool, reached through the `limits` storage, for neither has a close of its own."""
        storage = self._shared.storage if self._shared is not None else None
        client = getattr(getattr(storage, "bridge", None), "storage", None)
        pool = getattr(client, "connection_pool", None)
        if pool is not None:
            pool.disconnect()

    @property
    def available(self) -> bool:
        """False while this process counts on its own because the shared storage failed."""
        return self._fallback.available

    async def run(
        self,
        decide: Callable[Concatenate[RateLimiter, P], Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`decide(limiter, ...)` on the shared counters; on this process's own when they fail
        or are known to be down. A decision runs wholly on one of them."""
        shared = self._shared
        if shared is not None and self._fallback.try_shared():
            try:
                result = await decide(shared, *args, **kwargs)
            # coredis errors arrive wrapped; a connection reset under a pending command
            # arrives as the socket's own OSError.
            except (StorageError, OSError) as exc:
                self._fallback.failed(exc.storage_error if isinstance(exc, StorageError) else exc)
            else:
                self._fallback.answered()
                return result
        return await decide(self._local, *args, **kwargs)


# What a call to the shared storage raises when it does not answer: coredis' errors, or the
# socket's own for a connection reset under a pending command.
STORAGE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def redis_client(storage_uri: str, *, timeout: float) -> Any:
    """A coredis client of the storage a `RATE_LIMIT_STORAGE_URI` names, for other counts kept
    beside the rate limits: bounded waits, no retries of its own, answers decoded as text."""
    return coredis.Redis.from_url(
        # coredis' name of a Unix socket URL, as `limits` rewrites it for its own.
        storage_uri.removeprefix("async+").replace("redis+unix://", "unix://", 1),
        connect_timeout=timeout,
        stream_timeout=timeout,
        retry_policy=_no_retries(),
        decode_responses=True,
    )


def _no_retries() -> Any:
    # The options are typed as scalars by `limits`; coredis takes a policy object.
    return NoRetryPolicy()


class StorageUser(Protocol):
    """Anything that keeps its counts in the rate-limit storage, falling back to memory."""

    @property
    def name(self) -> str: ...

    @property
    def available(self) -> bool: ...


_limiters: weakref.WeakSet[StorageUser] = weakref.WeakSet()


def watch_storage(user: StorageUser) -> None:
    """Report `user` in the gauge `rate_limit.storage.available` while it lives."""
    _limiters.add(user)


def _availability(_: CallbackOptions) -> Iterable[Observation]:
    return [
        Observation(int(limiter.available), {"rate_limit.limiter": limiter.name})
        for limiter in list(_limiters)
    ]


metrics.get_meter("meshkit.ratelimit").create_observable_gauge(
    "rate_limit.storage.available",
    callbacks=[_availability],
    description="1 while the process counts rate limits in the configured storage, 0 while it "
    "counts on its own because that storage does not answer.",
)
