"""Outbox relay benchmark: drain rate of a backlog, and commit → consumer latency when idle.

    uv run python bench/outbox_relay.py [--rows 5000] [--latency-samples 200]

Uses a throw-away database (the orders schema) and RabbitMQ vhost, removed afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid

import aio_pika
from sqlalchemy import func, select

from meshdev.postgres import create_database, drop_database, sqlalchemy_url
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from meshkit.db import Database
from meshkit.messaging import Broker, CloudEvent, OutboxRelay, RelaySettings, add_event
from meshkit.migrations import upgrade_to_head
from orders_service.migrate import MIGRATIONS
from orders_service.models import outbox


def _event() -> CloudEvent:
    user_id = str(uuid.uuid4())
    return CloudEvent(
        source="orders",
        type="order.created",
        subject=user_id,
        data={"id": str(uuid.uuid4()), "user_id": user_id, "total_cents": 100},
    )


async def run(rows: int, samples: int) -> None:
    database_name = await create_database("bench_outbox")
    vhost = await create_vhost("bench_outbox")
    database = Database(sqlalchemy_url(database_name))
    broker = Broker(amqp_url(vhost), connection_name="bench")
    try:
        await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(database_name))
        broker.start()
        await broker.wait_connected()
        connection = await aio_pika.connect(amqp_url(vhost))
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind("mesh.events", "order.*")

        async with database.transaction() as session:
            for _ in range(rows):
                await add_event(session, outbox, _event())
        relay = OutboxRelay(
            engine=database.engine, table=outbox, broker=broker, settings=RelaySettings()
        )
        started = time.perf_counter()
        relay.start()
        while True:
            async with database.transaction() as session:
                pending = await session.scalar(
                    select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                )
            if pending == 0:
                break
            await asyncio.sleep(0.01)
        drained = time.perf_counter() - started
        print(f"drain: {rows} rows in {drained:.2f}s = {rows / drained:.0f} rows/s")
        await queue.purge()

        arrivals: dict[str, float] = {}

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrivals[message.message_id or ""] = time.perf_counter()

        await queue.consume(on_message, no_ack=True)
        committed: dict[str, float] = {}
        for _ in range(samples):
            event = _event()
            async with database.transaction() as session:
                await add_event(session, outbox, event)
            committed[str(event.id)] = time.perf_counter()
            await asyncio.sleep(0.02)
        await asyncio.sleep(1)
        latencies = sorted((arrivals[k] - committed[k]) * 1000 for k in committed if k in arrivals)
        p99 = latencies[int(len(latencies) * 0.99) - 1]
        print(
            f"commit -> consumer: n={len(latencies)} p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms"
        )
        await relay.stop()
        await connection.close()
    finally:
        await broker.close()
        await database.dispose()
        await drop_database(database_name)
        await delete_vhost(vhost)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency-samples", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.latency_samples))


if __name__ == "__main__":
    main()
