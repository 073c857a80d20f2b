"""What the outbox relay puts on a message: the trace context of the request that wrote the row,
continued by a publish span when this process traces, passed on unchanged when it does not or
when that request was not sampled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aio_pika
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import MetaData

from meshkit.db import Database
from meshkit.messaging import relay as relay_module
from meshkit.messaging.broker import Broker
from meshkit.messaging.events import CloudEvent
from meshkit.messaging.outbox import Outbox
from meshkit.messaging.relay import OutboxRelay

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
STORED_PARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@dataclass
class OutboxRow:
    """What the relay's claim returns of a row."""

    id: Any
    event_type: str
    event: str  # the stored JSON, as text
    source: str
    time: str
    traceparent: str | None
    tracestate: str | None


class RecordingExchange:
    """The broker's edge: keeps what would have been published."""

    def __init__(self) -> None:
        self.published: list[aio_pika.Message] = []

    async def publish(self, message: aio_pika.Message, **options: object) -> None:
        self.published.append(message)


async def _publish_one(traceparent: str | None) -> aio_pika.Message:
    database = Database("postgresql+asyncpg://unused@127.0.0.1:1/unused")
    relay = OutboxRelay(
        database=database,
        outbox=Outbox(MetaData()),
        broker=Broker("amqp://unused", connection_name="test"),
    )
    event = CloudEvent(source="orders", type="order.created", subject="u1", data={"id": "o1"})
    stored = event.model_dump_json(exclude_none=True)
    row = OutboxRow(
        event.id, event.type, stored, event.source, event.time.isoformat(), traceparent, None
    )
    exchange = RecordingExchange()
    await relay._publish(exchange, row)  # type: ignore[arg-type]
    await database.dispose()
    [message] = exchange.published
    # The stored text goes out as it is, with the contract's properties.
    assert message.body == stored.encode()
    assert (message.message_id, message.type) == (str(event.id), "order.created")
    return message


async def test_a_tracing_process_publishes_in_a_span_of_the_stored_trace(
    spans: InMemorySpanExporter,
) -> None:
    message = await _publish_one(STORED_PARENT)

    [span] = [s for s in spans.get_finished_spans() if s.name == "publish mesh.events"]
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert message.headers["traceparent"] == (
        f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01"
    )


async def test_without_tracing_the_stored_context_travels_on_unchanged(
    monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter
) -> None:
    monkeypatch.setattr(relay_module, "tracing_enabled", lambda: False)

    message = await _publish_one(STORED_PARENT)

    assert message.headers == {"traceparent": STORED_PARENT}
    assert spans.get_finished_spans() == ()


async def test_without_tracing_a_row_without_context_publishes_without_headers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relay_module, "tracing_enabled", lambda: False)

    message = await _publish_one(None)

    assert message.headers == {}


async def test_a_row_of_an_unsampled_request_travels_on_unchanged_without_a_span(
    spans: InMemorySpanExporter,
) -> None:
    unsampled = f"00-{TRACE_ID}-00f067aa0ba902b7-00"

    message = await _publish_one(unsampled)

    assert message.headers == {"traceparent": unsampled}
    assert spans.get_finished_spans() == ()
