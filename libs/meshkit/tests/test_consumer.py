"""The consumer against a real RabbitMQ queue, with handlers standing in for a service's: batches,
one ack per batch, a poison message alone to the DLQ, messages kept (not requeued) while the
database is unavailable, and consuming going on after the broker connection was lost mid-batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from urllib.parse import urlsplit

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshdev.customers import eventually
from meshdev.faults import TcpProxy
from meshdev.pytest_plugin import metric_points, recorded
from meshdev.rabbitmq import BROKER_URL, amqp_url, create_vhost, delete_vhost
from meshkit.messaging import (
    EVENTS_EXCHANGE,
    Broker,
    CloudEvent,
    Delivery,
    EventConsumer,
    declare_exchanges,
    declare_work_queue,
    to_message,
)
from meshkit.messaging import consumer as consumer_module

QUEUE = "consumer-test"


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    name = await create_vhost("meshkit_test")
    yield name
    await delete_vhost(name)


@pytest.fixture
async def channel(vhost: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect(amqp_url(vhost))
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_exchanges(channel)
        await channel.set_qos(prefetch_count=200)
        yield channel
    finally:
        await connection.close()


@pytest.fixture
async def queue(channel: AbstractChannel) -> AbstractQueue:
    return await declare_work_queue(channel, QUEUE, bindings=["test.#"], delivery_limit=3)


def _event(n: int) -> CloudEvent:
    return CloudEvent(source="test", type="test.event", subject="u1", data={"n": n})


async def _publish(
    channel: AbstractChannel,
    events: Sequence[CloudEvent],
    trace_headers: Mapping[str, str] | None = None,
) -> None:
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    headers = dict(trace_headers or {})
    await asyncio.gather(
        *(
            exchange.publish(to_message(e, trace_headers=headers), routing_key=e.type)
            for e in events
        )
    )


def _consumed(reader: InMemoryMetricReader) -> dict[str | None, int]:
    """`messaging.client.consumed.messages` of this queue's `test.event`s, by `error.type`."""
    counts: dict[str | None, int] = {}
    for point in metric_points(reader, "messaging.client.consumed.messages"):
        attributes = point.attributes
        if (
            attributes["messaging.destination.subscription.name"] == QUEUE
            and attributes["messaging.rabbitmq.destination.routing_key"] == "test.event"
            # What the dashboard groups by, as the publisher's count is.
            and attributes["messaging.destination.name"] == EVENTS_EXCHANGE
        ):
            error = attributes.get("error.type")
            counts[error] = counts.get(error, 0) + point.value
    return counts


async def _left_in(channel: AbstractChannel, name: str) -> int:
    declared = await channel.declare_queue(name, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_a_busy_queue_is_handled_in_batches_and_each_event_once(
    channel: AbstractChannel, queue: AbstractQueue, metric_reader: InMemoryMetricReader
) -> None:
    batches: list[list[int]] = []
    before = _consumed(metric_reader).get(None, 0)

    async def slow_store(deliveries: Sequence[Delivery]) -> None:
        batches.append([d.event.data["n"] for d in deliveries])
        await asyncio.sleep(0.05)  # the next messages arrive meanwhile

    consumer = EventConsumer(queue, slow_store, max_batch=50)
    await consumer.start()
    try:
        await _publish(channel, [_event(n) for n in range(120)])

        async def all_handled() -> bool:
            return sum(map(len, batches)) >= 120

        await eventually(all_handled)
    finally:
        await consumer.stop()

    assert sorted(n for batch in batches for n in batch) == list(range(120))
    assert max(map(len, batches)) > 1
    assert all(len(batch) <= 50 for batch in batches)
    assert await _left_in(channel, QUEUE) == 0  # all acked
    # Counted once per batch, as many as there were messages.
    assert _consumed(metric_reader).get(None, 0) - before == 120


async def test_a_poison_message_goes_to_the_dead_letter_queue_alone(
    channel: AbstractChannel, queue: AbstractQueue, metric_reader: InMemoryMetricReader
) -> None:
    stored: list[int] = []
    poison_alone = 0  # the poison message handled on its own: each time a failure
    before = _consumed(metric_reader)

    async def store(deliveries: Sequence[Delivery]) -> None:
        nonlocal poison_alone
        if any(d.event.data["n"] == 3 for d in deliveries):
            poison_alone += len(deliveries) == 1
            raise ValueError("a row no constraint lets in")
        stored.extend(d.event.data["n"] for d in deliveries)

    consumer = EventConsumer(queue, store, retry_delay=0.01, max_batch=50)
    await consumer.start()
    try:
        await _publish(channel, [_event(n) for n in range(6)])

        async def poison_dead_lettered() -> bool:
            return await _left_in(channel, f"{QUEUE}.dlq") == 1

        await eventually(poison_dead_lettered)
    finally:
        await consumer.stop()

    assert sorted(set(stored)) == [0, 1, 2, 4, 5]
    after = _consumed(metric_reader)
    assert after.get(None, 0) - before.get(None, 0) == len(stored)
    assert after.get("ValueError", 0) - before.get("ValueError", 0) == poison_alone > 1


async def test_messages_are_kept_while_the_database_is_unavailable(
    channel: AbstractChannel, queue: AbstractQueue
) -> None:
    """No redelivery while the database is down: a requeue would spend the delivery limit
    (3 here) and dead-letter every message of a long enough outage."""
    seen: list[Delivery] = []
    outage = [5]  # attempts that find the database gone

    async def store(deliveries: Sequence[Delivery]) -> None:
        seen.extend(deliveries)
        if outage[0] > 0:
            outage[0] -= 1
            raise ConnectionRefusedError("the database is restarting")

    consumer = EventConsumer(queue, store, retry_delay=0.01, max_batch=50)
    await consumer.start()
    try:
        await _publish(channel, [_event(1)])

        async def stored() -> bool:
            return len(seen) == 6

        await eventually(stored)
        await asyncio.sleep(0.2)
    finally:
        await consumer.stop()

    assert len({id(delivery) for delivery in seen}) == 1  # one delivery, tried six times
    assert await _left_in(channel, QUEUE) == 0
    assert await _left_in(channel, f"{QUEUE}.dlq") == 0


async def test_a_message_of_an_unsampled_trace_is_processed_in_that_trace_without_a_span(
    channel: AbstractChannel, queue: AbstractQueue, spans: InMemorySpanExporter
) -> None:
    """The caller's decision holds (the sampler follows the parent): a span started there
    would record nothing, so none is started and the carried context is current."""
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parents = {
        "sampled": f"00-{trace_id}-00f067aa0ba902b7-01",
        "unsampled": f"00-{trace_id}-00f067aa0ba902b8-00",
    }
    seen: dict[int, tuple[trace.SpanContext, Mapping[str, str]]] = {}

    async def store(deliveries: Sequence[Delivery]) -> None:
        current = trace.get_current_span().get_span_context()
        for delivery in deliveries:
            seen[delivery.event.data["n"]] = (current, delivery.trace)

    consumer = EventConsumer(queue, store, max_batch=1)
    await consumer.start()
    try:
        await _publish(channel, [_event(0)], {"traceparent": parents["unsampled"]})
        await _publish(channel, [_event(1)], {"traceparent": parents["sampled"]})

        async def both_handled() -> bool:
            return len(seen) == 2

        await eventually(both_handled)
    finally:
        await consumer.stop()

    unsampled, unsampled_headers = seen[0]
    assert (format(unsampled.trace_id, "032x"), format(unsampled.span_id, "016x")) == (
        trace_id,
        "00f067aa0ba902b8",
    )
    assert not unsampled.trace_flags.sampled
    assert unsampled_headers == {"traceparent": parents["unsampled"]}  # passed on as it came

    [span] = [s for s in spans.get_finished_spans() if s.name == f"process {QUEUE}"]
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    sampled, sampled_headers = seen[1]
    assert sampled.span_id == span.context.span_id
    assert sampled_headers["traceparent"] == (
        f"00-{trace_id}-{format(span.context.span_id, '016x')}-01"
    )


async def test_with_nowhere_to_send_a_message_is_processed_without_a_span_or_a_count(
    nowhere_to_send: None,
    channel: AbstractChannel,
    queue: AbstractQueue,
    spans: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
) -> None:
    """No OTLP endpoint: no `process` span, nothing counted or timed; the context the
    message carries travels on as it came."""
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    before = recorded(metric_reader, scope="meshkit")
    seen: list[Mapping[str, str]] = []

    async def store(deliveries: Sequence[Delivery]) -> None:
        seen.extend(delivery.trace for delivery in deliveries)

    consumer = EventConsumer(queue, store)
    await consumer.start()
    try:
        await _publish(channel, [_event(0)], {"traceparent": traceparent})

        async def handled() -> bool:
            return bool(seen)

        await eventually(handled)
    finally:
        await consumer.stop()

    assert seen == [{"traceparent": traceparent}]
    assert spans.get_finished_spans() == ()
    assert recorded(metric_reader, scope="meshkit") == before


async def test_a_batch_whose_connection_was_lost_is_handled_again_and_consuming_goes_on(
    vhost: str, channel: AbstractChannel, queue: AbstractQueue
) -> None:
    """The batch's ack fails with the connection; the broker delivers it again once aio-pika
    has restored the connection, and the consumer handles that and what comes after."""
    address = urlsplit(BROKER_URL)
    link = await TcpProxy(address.hostname or "127.0.0.1", address.port or 5672).start()
    broker = Broker(amqp_url(vhost, port=link.port), connection_name="consumer-test")
    broker.start()
    handled: list[int] = []
    connection_lost = asyncio.Event()

    async def store(deliveries: Sequence[Delivery]) -> None:
        handled.extend(d.event.data["n"] for d in deliveries)
        if handled == [1]:
            await connection_lost.wait()  # the batch is in flight when the link is cut

    async def first_in_flight() -> bool:
        return handled == [1]

    async def disconnected() -> bool:
        return not broker.is_connected

    async def reconnected() -> bool:
        return broker.is_connected

    async def first_again_and_the_next() -> bool:
        return sorted(handled) == [1, 1, 2]

    consumer: EventConsumer | None = None
    try:
        consuming = await broker.channel(prefetch=10)
        consumer = EventConsumer(await consuming.get_queue(QUEUE), store)
        await consumer.start()
        await _publish(channel, [_event(1)])
        await eventually(first_in_flight)

        await link.cut()
        await eventually(disconnected)
        connection_lost.set()  # the batch is done; its channel is gone
        await link.restore()
        await eventually(reconnected, within=30)
        await _publish(channel, [_event(2)])

        await eventually(first_again_and_the_next, within=30)
    finally:
        if consumer is not None:
            await consumer.stop()
        await broker.close()
        await link.close()
    assert await _left_in(channel, QUEUE) == 0  # all acked


async def test_a_stop_during_a_database_outage_leaves_the_batch_to_the_broker_at_once(
    channel: AbstractChannel,
    queue: AbstractQueue,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The stop ends the pause between tries: the batch is left unsettled (the broker delivers
    it again, no delivery spent), not tried once more, not dead-lettered."""
    monkeypatch.setattr(consumer_module, "_OUTAGE_RETRY_CAP", 60.0)  # pauses of up to 30 s
    tries = 0

    async def database_gone(deliveries: Sequence[Delivery]) -> None:
        nonlocal tries
        tries += 1
        raise ConnectionRefusedError("the database is restarting")

    async def tried() -> bool:
        return tries == 1

    consumer = EventConsumer(queue, database_gone, retry_delay=30)
    await consumer.start()
    await _publish(channel, [_event(1)])
    await eventually(tried)
    with caplog.at_level(logging.INFO, logger="meshkit.messaging.consumer"):
        async with asyncio.timeout(1):
            await consumer.stop()

    assert tries == 1
    assert any("left to the broker to deliver again" in r.getMessage() for r in caplog.records)
    assert await _left_in(channel, f"{QUEUE}.dlq") == 0
