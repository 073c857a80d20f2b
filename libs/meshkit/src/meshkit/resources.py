"""What one client may hold of a process, made visible: the refusals of every bound by reason,
and the long-lived streams a process has open.

- `resource_limit.refusals` (counter, `resource_limit.reason`): one per request, connection,
  stream or socket refused or cut off because a bound was reached: a stream cap, a full pool,
  a request head that is too large or too slow, too many connections from one address, a
  WebSocket client sending too fast. Prometheus: `resource_limit_refusals_total`.
- `streams.open` (gauge, `stream.kind`: `sse` or `websocket`): the streams this process holds
  open now, and `streams.max` (gauge): the most it accepts, where it has such a cap. Read when
  metrics are collected: nothing is recorded per stream.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Mapping
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

_meter = metrics.get_meter("meshkit.resources")
_refusals = _meter.create_counter(
    "resource_limit.refusals",
    unit="{refusal}",
    description="Requests, connections, streams and sockets refused or cut off because a "
    "bound on what one client may hold was reached, by reason.",
)


def count_refusal(reason: str) -> None:
    """One refusal of `reason` (snake_case, from the documented list in docs/gateway.md)."""
    _refusals.add(1, {"resource_limit.reason": reason})


class StreamHolder(Protocol):
    """Something holding long-lived streams: its open streams by kind, and its cap."""

    def open_streams(self) -> Mapping[str, int]: ...

    @property
    def max_streams(self) -> int | None: ...


_holders: weakref.WeakSet[StreamHolder] = weakref.WeakSet()


def watch_streams(holder: StreamHolder) -> None:
    """Report `holder`'s streams in `streams.open` and `streams.max` while it lives."""
    _holders.add(holder)


def _open(_: CallbackOptions) -> Iterable[Observation]:
    holders = list(_holders)
    if not holders:
        return []  # a process that holds no streams reports none
    totals: dict[str, int] = {"sse": 0, "websocket": 0}
    for holder in holders:
        for kind, count in holder.open_streams().items():
            totals[kind] = totals.get(kind, 0) + count
    return [Observation(count, {"stream.kind": kind}) for kind, count in totals.items()]


def _max(_: CallbackOptions) -> Iterable[Observation]:
    caps = [holder.max_streams for holder in list(_holders)]
    known = [cap for cap in caps if cap is not None]
    return [Observation(sum(known))] if known else []


_meter.create_observable_gauge(
    "streams.open",
    callbacks=[_open],
    unit="{stream}",
    description="Long-lived streams (SSE, WebSocket) this process holds open, by kind.",
)
_meter.create_observable_gauge(
    "streams.max",
    callbacks=[_max],
    unit="{stream}",
    description="The most long-lived streams this process accepts; new ones are refused above.",
)
