"""The consumer against a real RabbitMQ queue, with handlers standing in for a service's: batches,
one ack per batch, a poison message alone to the DLQ, and messages kept (not requeued) while
the database is unavailable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from meshdev.customers import eventually
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from meshkit.messaging import (
    EVENTS_EXCHANGE,
    CloudEvent,
    Delivery,
    EventConsumer,
    declare_exchanges,
    declare_work_queue,
    to_message,
)

QUEUE = "consumer-test"


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    vhost = await create_vhost("meshkit_test")
    connection = await aio_pika.connect(amqp_url(vhost))
    try:
        channel = await connection.channel(publisher_confirms=True)
        await declare_exchanges(channel)
        await channel.set_qos(prefetch_count=200)
        yield channel
    finally:
        await connection.close()
        await delete_vhost(vhost)


@pytest.fixture
async def queue(channel: AbstractChannel) -> AbstractQueue:
    return await declare_work_queue(channel, QUEUE, bindings=["test.#"], delivery_limit=3)


def _event(n: int) -> CloudEvent:
    return CloudEvent(source="test", type="test.event", subject="u1", data={"n": n})


async def _publish(channel: AbstractChannel, events: Sequence[CloudEvent]) -> None:
    exchange = await channel.get_exchange(EVENTS_EXCHANGE)
    await asyncio.gather(
        *(exchange.publish(to_message(e, trace_headers={}), routing_key=e.type) for e in events)
    )


async def _left_in(channel: AbstractChannel, name: str) -> int:
    declared = await channel.declare_queue(name, passive=True)
    return int(declared.declaration_result.message_count or 0)


async def test_a_busy_queue_is_handled_in_batches_and_each_event_once(
    channel: AbstractChannel, queue: AbstractQueue
) -> None:
    batches: list[list[int]] = []

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


async def test_a_poison_message_goes_to_the_dead_letter_queue_alone(
    channel: AbstractChannel, queue: AbstractQueue
) -> None:
    stored: list[int] = []

    async def store(deliveries: Sequence[Delivery]) -> None:
        if any(d.event.data["n"] == 3 for d in deliveries):
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
