"""Every event becomes exactly one notification, across the real processes and RabbitMQ."""

from __future__ import annotations

import asyncpg
import httpx

from meshdev.customers import Customer, eventually
from meshdev.stack import RunningMesh


async def _pending_outbox_rows(mesh: RunningMesh) -> int:
    total = 0
    for name in ("users", "orders", "notifications"):
        connection = await asyncpg.connect(mesh.database_url(name))
        try:
            total += await connection.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        finally:
            await connection.close()
    return total


async def test_registration_order_and_cancel_each_make_exactly_one_notification(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    customer = await Customer.register(mesh, http)
    placed = await customer.place_order()
    order = placed.json()
    cancelled = await http.post(
        f"{mesh.url('orders')}/api/orders/{order['id']}/cancel", headers=customer.headers
    )
    assert cancelled.status_code == 200

    await customer.notifications_of("order.cancelled", 1)
    await eventually(lambda: _all_sent(mesh))

    notifications = await customer.notifications()
    assert sorted(n["type"] for n in notifications) == [
        "order.cancelled",
        "order.created",
        "user.registered",
    ]
    assert len({n["event_id"] for n in notifications}) == 3
    assert all(n["user_id"] == customer.id and n["read"] is False for n in notifications)


async def _all_sent(mesh: RunningMesh) -> bool:
    return await _pending_outbox_rows(mesh) == 0


async def test_the_notification_of_an_order_continues_the_orders_trace(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    customer = await Customer.register(mesh, http)
    placed = await customer.place_order()
    [notification] = await customer.notifications_of("order.created", 1)

    connection = await asyncpg.connect(mesh.database_url("notifications"))
    try:
        traceparent = await connection.fetchval(
            "SELECT traceparent FROM outbox WHERE event->'data'->>'id' = $1",
            notification["id"],
        )
    finally:
        await connection.close()
    # request -> outbox -> relay publish -> consumer -> notification's own outbox row
    assert traceparent.split("-")[1] == placed.headers["x-trace-id"]
