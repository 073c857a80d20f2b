"""The relay publishes the outbox to `mesh.events`: confirmed, with the contract's envelope and
properties, in the trace of the request that placed the order."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aio_pika
import asyncpg
import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshdev.customers import eventually
from meshdev.pytest_plugin import metric_points
from meshdev.rabbitmq import amqp_url
from meshdev.stack import RunningMesh
from meshkit.messaging import EVENTS_EXCHANGE

ORDER = {"items": [{"sku": "book-1", "quantity": 1, "unit_price_cents": 1000}]}


@pytest.fixture
async def order_events(users_mesh: RunningMesh) -> AsyncIterator[aio_pika.abc.AbstractQueue]:
    """A queue of this test bound to `order.*`, as a consumer's would be."""
    connection = await aio_pika.connect(amqp_url(users_mesh.vhost))
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "order.*")
        yield queue


async def _next_message(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    async def probe() -> aio_pika.abc.AbstractIncomingMessage | None:
        return await queue.get(no_ack=True, fail=False)

    return await eventually(probe)


async def test_order_created_is_published_with_the_contracts_envelope_and_properties(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    order_events: aio_pika.abc.AbstractQueue,
    orders_db: asyncpg.Connection,
) -> None:
    order = (await client.post("/api/orders", json=ORDER, headers=alice)).json()

    message = await _next_message(order_events)

    event = json.loads(message.body)
    assert message.routing_key == "order.created"
    assert message.content_type == "application/cloudevents+json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == event["id"]
    assert message.type == event["type"] == "order.created"
    assert event["subject"] == order["user_id"]
    assert event["data"] == order
    assert (message.headers or {}).get("traceparent")

    async def marked_sent() -> bool:
        row = await orders_db.fetchrow("SELECT sent_at FROM outbox")
        return row is not None and row["sent_at"] is not None

    await eventually(marked_sent)


async def test_publish_span_belongs_to_the_trace_of_the_request(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    order_events: aio_pika.abc.AbstractQueue,
    spans: InMemorySpanExporter,
) -> None:
    response = await client.post("/api/orders", json=ORDER, headers=alice)
    message = await _next_message(order_events)

    publish = [s for s in spans.get_finished_spans() if s.name == "publish mesh.events"]
    assert len(publish) == 1
    span = publish[0]
    assert span.kind == SpanKind.PRODUCER
    assert format(span.context.trace_id, "032x") == response.headers["x-trace-id"]
    assert span.parent is not None
    assert span.attributes is not None
    assert span.attributes["messaging.system"] == "rabbitmq"
    assert span.attributes["messaging.destination.name"] == "mesh.events"
    assert span.attributes["messaging.message.id"] == message.message_id
    # The message carries the publish span as the consumer's parent.
    traceparent = str((message.headers or {})["traceparent"])
    assert traceparent.split("-")[2] == format(span.context.span_id, "016x")


async def test_an_unroutable_event_stays_pending_until_a_queue_is_bound(
    polling_client: httpx.AsyncClient,
    alice: dict[str, str],
    users_mesh: RunningMesh,
    orders_db: asyncpg.Connection,
) -> None:
    await polling_client.post("/api/orders", json=ORDER, headers=alice)

    async def refused() -> bool:
        row = await orders_db.fetchrow("SELECT attempts, last_error, sent_at FROM outbox")
        return row is not None and row["attempts"] >= 1 and row["sent_at"] is None

    await eventually(refused)

    connection = await aio_pika.connect(amqp_url(users_mesh.vhost))
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(EVENTS_EXCHANGE, "order.created")
        message = await _next_message(queue)
    assert message.type == "order.created"

    async def all_sent() -> bool:
        pending = await orders_db.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        return bool(pending == 0)

    await eventually(all_sent)


async def test_published_events_and_the_backlog_are_measured(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    order_events: aio_pika.abc.AbstractQueue,
    metric_reader: InMemoryMetricReader,
) -> None:
    await client.post("/api/orders", json=ORDER, headers=alice)
    await _next_message(order_events)

    sent = [
        p
        for p in metric_points(metric_reader, "messaging.client.sent.messages")
        if p.attributes.get("messaging.rabbitmq.destination.routing_key") == "order.created"
        and "error.type" not in p.attributes
    ]
    assert sum(p.value for p in sent) >= 1
    backlog = metric_points(metric_reader, "outbox.pending.messages")
    assert backlog
    assert {p.attributes["outbox.table"] for p in backlog} == {"outbox"}
