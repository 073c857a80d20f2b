"""Messaging metrics (OpenTelemetry semantic convention names where they exist).

- `messaging.client.sent.messages` / `messaging.client.consumed.messages`: counters by exchange
  (`messaging.destination.name`) and event type (routing key), with `error.type` when the
  publish or the processing failed; consumers add their queue (subscription name).
- `messaging.process.duration`: seconds a consumer spent on a message.
- `outbox.pending.messages` and `outbox.pending.age`: the outbox backlog (unsent rows, seconds
  since the oldest was written) as last seen by this process's relay.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Protocol

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_SYSTEM,
)
from opentelemetry.semconv._incubating.metrics.messaging_metrics import (
    MESSAGING_CLIENT_CONSUMED_MESSAGES,
    MESSAGING_CLIENT_SENT_MESSAGES,
    MESSAGING_PROCESS_DURATION,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE

from meshkit.messaging.tracing import RABBITMQ

meter = metrics.get_meter("meshkit.messaging")

sent_messages = meter.create_counter(
    MESSAGING_CLIENT_SENT_MESSAGES, unit="{message}", description="Messages published."
)
consumed_messages = meter.create_counter(
    MESSAGING_CLIENT_CONSUMED_MESSAGES, unit="{message}", description="Messages processed."
)
process_duration = meter.create_histogram(
    MESSAGING_PROCESS_DURATION, unit="s", description="Time spent processing one message."
)


def message_attributes(
    exchange: str, routing_key: str, *, subscription: str | None = None, error: str | None = None
) -> dict[str, str]:
    """What a sent or consumed count (and a process duration) is measured by."""
    attributes = {
        MESSAGING_SYSTEM: RABBITMQ,
        MESSAGING_DESTINATION_NAME: exchange,
        MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY: routing_key,
    }
    if subscription is not None:
        attributes[MESSAGING_DESTINATION_SUBSCRIPTION_NAME] = subscription
    if error is not None:
        attributes[ERROR_TYPE] = error
    return attributes


class BacklogSource(Protocol):
    table_name: str
    pending_rows: int
    oldest_pending_age: float


_sources: weakref.WeakSet[BacklogSource] = weakref.WeakSet()


def watch_backlog(source: BacklogSource) -> None:
    _sources.add(source)


def _backlog(
    read: Callable[[BacklogSource], float],
) -> Callable[[CallbackOptions], list[Observation]]:
    """A gauge's callback: `read` of each relay of this process, by its outbox table."""
    return lambda _: [Observation(read(s), {"outbox.table": s.table_name}) for s in list(_sources)]


meter.create_observable_gauge(
    "outbox.pending.messages",
    callbacks=[_backlog(lambda source: source.pending_rows)],
    unit="{message}",
    description="Outbox rows not yet published.",
)
meter.create_observable_gauge(
    "outbox.pending.age",
    callbacks=[_backlog(lambda source: source.oldest_pending_age)],
    unit="s",
    description="Age of the oldest outbox row not yet published.",
)
