"""The notifications service killed with SIGKILL while events stream in: the messages it had
not acknowledged go back to the queue, so after a restart every event is processed, and none
twice (one notification, and one `notification.created`, per event id)."""

from __future__ import annotations

import asyncio

import httpx

from meshdev.customers import Customer, eventually
from meshdev.stack import RunningMesh

CUSTOMERS = 4
ORDERS_EACH = 40
PROCESSED = "SELECT count(*) FROM notifications WHERE type = 'order.created' AND user_id = ANY($1)"


async def test_notifications_killed_mid_stream_process_every_event_once_after_restart(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    customers = await asyncio.gather(*(Customer.register(mesh, http) for _ in range(CUSTOMERS)))
    await asyncio.gather(*(c.notifications_of("user.registered", 1) for c in customers))
    user_ids = [c.id for c in customers]
    slots = asyncio.Semaphore(8)

    async def place(customer: Customer) -> httpx.Response:
        async with slots:
            return await customer.place_order()

    placing = asyncio.gather(*(place(c) for c in customers for _ in range(ORDERS_EACH)))

    # Read the database directly meanwhile: asking through the gateway while notifications
    # is down would (rightly) open its circuit.
    async def streaming() -> bool:
        processed: int = await mesh.fetchval("notifications", PROCESSED, user_ids)
        return processed >= 10

    await eventually(streaming, every=0.02)
    notifications = mesh.processes["notifications"]
    await asyncio.to_thread(notifications.kill)
    processed_before_the_kill = await mesh.fetchval("notifications", PROCESSED, user_ids)

    placed = await placing
    assert [r.status_code for r in placed] == [201] * CUSTOMERS * ORDERS_EACH, {
        r.text for r in placed if r.status_code != 201
    }
    assert processed_before_the_kill < CUSTOMERS * ORDERS_EACH  # killed mid-stream
    notifications.start()
    await asyncio.to_thread(notifications.wait_ready)

    await asyncio.gather(
        *(c.notifications_of("order.created", ORDERS_EACH, within=60) for c in customers)
    )
    event_of_order = {
        row["order_id"]: row["event_id"]
        for row in await mesh.fetch(
            "orders",
            "SELECT event->'data'->>'id' AS order_id, id::text AS event_id FROM outbox"
            " WHERE event_type = 'order.created' AND event->>'subject' = ANY($1::text[])",
            user_ids,
        )
    }
    notified = []
    for customer in customers:
        notified += [
            n["event_id"] for n in await customer.notifications() if n["type"] == "order.created"
        ]
    assert sorted(notified) == sorted(event_of_order[r.json()["id"]] for r in placed)
    # Each notification was announced once: a redelivered event stored and published nothing.
    announced = await mesh.fetchval(
        "notifications",
        "SELECT count(*) FROM outbox WHERE event_type = 'notification.created'"
        " AND event->>'subject' = ANY($1::text[])",
        [str(u) for u in user_ids],
    )
    assert announced == CUSTOMERS * (ORDERS_EACH + 1)  # + the welcome notifications
