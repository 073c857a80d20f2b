"""Messaging in the running mesh: the orders process's outbox relay, from an order's write to
its event on the broker, and a backlog written straight into the orders outbox (as another
program would write it), which the relay drains while the notifications process is stopped
(its queue keeps the events); then the consumer works the queue off with the machine to
itself."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import aio_pika
import aiohttp
import asyncpg
from loadgen import percentile
from order_flow import ORDER_BODY

from meshkit.messaging import CloudEvent

INSERT = "INSERT INTO outbox (id, event_type, event) VALUES ($1, $2, $3::jsonb)"


def _order_created() -> tuple[uuid.UUID, str, str]:
    user_id = str(uuid.uuid4())
    event = CloudEvent(
        source="orders",
        type="order.created",
        subject=user_id,
        data={"id": str(uuid.uuid4()), "user_id": user_id, "total_cents": 2500},
    )
    return event.id, event.type, json.dumps(event.model_dump(mode="json", exclude_none=True))


async def commit_to_publish(
    orders_url: str, token: str, rabbitmq_url: str, *, samples: int, interval: float
) -> dict[str, Any]:
    """One order at a time, `interval` s apart, straight to the orders service, with the relay
    otherwise idle: from the event's `time` (taken just before the statement that writes the
    order and its event) to the message reaching a queue of our own, on the machine's clock.
    The service wakes its relay once the statement has committed."""
    arrivals: dict[str, float] = {}  # order id -> the event's latency, ms
    placed: set[str] = set()
    connection = await aio_pika.connect(rabbitmq_url)
    headers = {"Authorization": f"Bearer {token}"}
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind("mesh.events", "order.created")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrived = time.time()
            event = json.loads(message.body)
            written = datetime.fromisoformat(event["time"]).timestamp()
            arrivals[event["data"]["id"]] = (arrived - written) * 1000

        consumer_tag = await queue.consume(on_message, no_ack=True)
        async with aiohttp.ClientSession(headers=headers) as http:
            for _ in range(samples):
                async with http.post(f"{orders_url}/api/orders", json=ORDER_BODY) as response:
                    if response.status == 201:
                        placed.add((await response.json())["id"])
                await asyncio.sleep(interval)
        for _ in range(150):  # at most 3 s for the last messages
            if placed <= set(arrivals):
                break
            await asyncio.sleep(0.02)
        await queue.cancel(consumer_tag)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    latencies = [arrivals[k] for k in placed if k in arrivals]
    return {
        "samples": samples,
        "placed": len(placed),
        "received": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
    }


async def drain(orders_dsn: str, *, backlog: int, within: float) -> dict[str, Any]:
    """Commits `backlog` events in one transaction, then times the relay emptying the outbox
    from its first claim, which its next poll makes (nothing wakes it for another program's
    rows); it stops counting `within` s after the commit."""
    rows = [_order_created() for _ in range(backlog)]
    orders = await asyncpg.connect(orders_dsn)
    pending_sql = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
    # A claimed row's lease lies in the future; the partial index finds it at once.
    claimed_sql = (
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE sent_at IS NULL AND next_attempt_at > now())"
    )
    try:
        async with orders.transaction():
            await orders.executemany(INSERT, rows)
        committed = time.perf_counter()
        while time.perf_counter() < committed + within:
            if await orders.fetchval(claimed_sql):
                break
            await asyncio.sleep(0.01)
        claimed = time.perf_counter()
        drained_at: float | None = None
        while time.perf_counter() < committed + within:
            if await orders.fetchval(pending_sql) == 0:
                drained_at = time.perf_counter()
                break
            await asyncio.sleep(0.1)
        pending_left: int = await orders.fetchval(pending_sql)
    finally:
        await orders.close()
    sent = backlog - pending_left
    drain_seconds = (drained_at or time.perf_counter()) - claimed
    return {
        "backlog_events": backlog,
        "events_published": sent,
        "drained": drained_at is not None,
        "until_first_claim_seconds": round(claimed - committed, 2),
        "drain_seconds": round(drain_seconds, 2),
        "drain_events_per_second": round(sent / drain_seconds, 1),
    }


async def consume(
    notifications_dsn: str,
    *,
    expected: int,
    within: float,
    start_consumer: Callable[[], Awaitable[None]],
) -> dict[str, Any]:
    """Starts the consumer on a queue already holding `expected` events and measures how fast
    it stores their notifications: between the first and the last one stored, by their own
    `created_at` (a batch's time), so neither the process start nor the polling counts."""
    notifications = await asyncpg.connect(notifications_dsn)
    try:
        since = await notifications.fetchval("SELECT now()")
        await start_consumer()
        deadline = time.perf_counter() + within
        stored = 0
        while time.perf_counter() < deadline:
            stored = await notifications.fetchval(
                "SELECT count(*) FROM notifications WHERE created_at >= $1", since
            )
            if stored >= expected:
                break
            await asyncio.sleep(0.1)
        span: float | None = await notifications.fetchval(
            "SELECT extract(epoch FROM max(created_at) - min(created_at))::float8"
            " FROM notifications WHERE created_at >= $1",
            since,
        )
    finally:
        await notifications.close()
    seconds = max(span or 0.0, 1e-3)
    return {
        "events_waiting": expected,
        "notifications_stored": stored,
        "stored_all": stored >= expected,
        "consume_seconds": round(seconds, 2),
        "notifications_per_second": round(stored / seconds, 1),
    }


async def wait_until_quiet(
    orders_dsn: str, notifications_dsn: str, *, within: float, poll: float = 0.5
) -> dict[str, Any]:
    """Waits (at most `within` s) until both outboxes are empty and the notifications count has
    stopped growing: the events of an earlier load step are through, so they do not queue ahead
    of the next step's."""
    orders = await asyncpg.connect(orders_dsn)
    notifications = await asyncpg.connect(notifications_dsn)
    pending_sql = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
    started = time.perf_counter()
    quiet = False
    try:
        previous = -1
        for _ in range(int(within / poll)):
            pending = await orders.fetchval(pending_sql) + await notifications.fetchval(pending_sql)
            stored: int = await notifications.fetchval("SELECT count(*) FROM notifications")
            if pending == 0 and stored == previous:
                quiet = True
                break
            previous = stored
            await asyncio.sleep(poll)
    finally:
        await orders.close()
        await notifications.close()
    return {"quiet": quiet, "waited_seconds": round(time.perf_counter() - started, 2)}
