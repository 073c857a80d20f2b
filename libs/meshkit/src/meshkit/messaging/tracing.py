"""Messaging spans (OpenTelemetry semantic conventions) and W3C context in message headers.

Context is injected and extracted by hand rather than by an aio-pika instrumentation: the trace
of a published event starts in the request that wrote the outbox row, long before the relay
publishes it, and the instrumentation cannot know that.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
    MessagingSystemValues,
)
from opentelemetry.trace import Span, SpanKind

tracer = trace.get_tracer("meshkit.messaging")
RABBITMQ = MessagingSystemValues.RABBITMQ.value


def trace_carrier(span: Span | None = None) -> dict[str, str]:
    """`traceparent`/`tracestate` of `span`, current or not (default: the current context), to
    store with an outbox row or hand to a handler."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=None if span is None else trace.set_span_in_context(span))
    return carrier


def context_from(headers: Mapping[str, Any] | None) -> Context:
    """The trace context carried by message headers (or an outbox row); empty if none."""
    carrier = {
        key: value.decode() if isinstance(value, bytes) else str(value)
        for key, value in (headers or {}).items()
        if isinstance(value, str | bytes)
    }
    return propagate.extract(carrier)


@contextmanager
def publish_span(
    *, exchange: str, routing_key: str, message_id: str, parent: Context
) -> Iterator[Span]:
    with tracer.start_as_current_span(
        f"publish {exchange}",
        context=parent,
        kind=SpanKind.PRODUCER,
        attributes={
            MESSAGING_SYSTEM: RABBITMQ,
            MESSAGING_OPERATION_NAME: "publish",
            MESSAGING_OPERATION_TYPE: MessagingOperationTypeValues.SEND.value,
            MESSAGING_DESTINATION_NAME: exchange,
            MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY: routing_key,
            MESSAGING_MESSAGE_ID: message_id,
        },
    ) as span:
        yield span


def start_process_span(
    *,
    queue: str,
    exchange: str,
    routing_key: str,
    message_id: str | None,
    parent: Context,
) -> Span:
    """The CONSUMER span of one message, child of `parent` (the context in its headers); the
    caller ends it (a batch keeps several open at once)."""
    attributes: dict[str, str] = {
        MESSAGING_SYSTEM: RABBITMQ,
        MESSAGING_OPERATION_NAME: "process",
        MESSAGING_OPERATION_TYPE: MessagingOperationTypeValues.PROCESS.value,
        MESSAGING_DESTINATION_NAME: exchange,
        MESSAGING_DESTINATION_SUBSCRIPTION_NAME: queue,
        MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY: routing_key,
    }
    if message_id:
        attributes[MESSAGING_MESSAGE_ID] = message_id
    return tracer.start_span(
        f"process {queue}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
