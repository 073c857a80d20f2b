"""RabbitMQ unreachable for ~10 s while customers place 200 orders through the gateway: every
order is accepted (the outbox keeps its event), and once the broker is back every event is
published and every order notified exactly once. An outage the services recover from is no
error in their logs: each says in a warning that it lost the connection and that it reconnected,
with no traceback. The outage is the fault proxy between the services and the machine's broker,
which is never touched."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from meshdev.customers import Customer, eventually
from meshdev.faults import TcpProxy
from meshdev.stack import RunningMesh

CUSTOMERS = 5
ORDERS_EACH = 40  # 200 orders in all
OUTAGE_SECONDS = 10.0
UNSENT = "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
SERVICES = ("users", "orders", "notifications")


def _records(logs: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in logs.splitlines() if line.startswith("{")]


async def test_orders_placed_while_the_broker_is_down_are_each_notified_once_after_it(
    mesh: RunningMesh, broker_link: TcpProxy, http: httpx.AsyncClient
) -> None:
    customers = await asyncio.gather(*(Customer.register(mesh, http) for _ in range(CUSTOMERS)))
    await asyncio.gather(*(c.notifications_of("user.registered", 1) for c in customers))
    first = customers[0]
    logged_before = {name: len(mesh.processes[name].logs()) for name in SERVICES}

    await broker_link.cut()
    cut_at = time.monotonic()

    async def orders_not_ready() -> bool:
        response = await http.get(f"{mesh.url('orders')}/readyz")
        return response.status_code == 503 and "broker" in response.json()["detail"]

    await eventually(orders_not_ready)
    slots = asyncio.Semaphore(16)

    async def place(customer: Customer) -> httpx.Response:
        async with slots:
            return await customer.place_order()

    placed = await asyncio.gather(*(place(c) for c in customers for _ in range(ORDERS_EACH)))
    assert [r.status_code for r in placed] == [201] * CUSTOMERS * ORDERS_EACH, {
        r.text for r in placed if r.status_code != 201
    }
    cancelled = await http.post(
        f"{mesh.public_url('orders')}/api/orders/{placed[0].json()['id']}/cancel",
        headers=first.headers,
    )
    assert cancelled.status_code == 200, cancelled.text
    # Held in the outbox, not lost: 200 created + 1 cancelled.
    assert await mesh.fetchval("orders", UNSENT) == CUSTOMERS * ORDERS_EACH + 1

    await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
    await broker_link.restore()

    await asyncio.gather(
        *(c.notifications_of("order.created", ORDERS_EACH, within=60) for c in customers)
    )
    await first.notifications_of("order.cancelled", 1, within=30)

    async def nothing_unsent() -> bool:
        services = ("users", "orders", "notifications")
        return [await mesh.fetchval(s, UNSENT) for s in services] == [0, 0, 0]

    await eventually(nothing_unsent, within=30)

    async def all_ready() -> bool:  # connected to the broker again
        answers = [await http.get(f"{mesh.url(name)}/readyz") for name in SERVICES]
        return all(r.status_code == 200 for r in answers)

    await eventually(all_ready)

    # Exactly one notification per order event: the event ids match one to one.
    event_of_order = {
        row["order_id"]: row["event_id"]
        for row in await mesh.fetch(
            "orders",
            "SELECT event->'data'->>'id' AS order_id, id::text AS event_id FROM outbox"
            " WHERE event_type = 'order.created'",
        )
    }
    notified: list[str] = []
    for customer in customers:
        notifications = await customer.notifications()
        notified += [n["event_id"] for n in notifications if n["type"] == "order.created"]
    assert sorted(notified) == sorted(event_of_order[r.json()["id"]] for r in placed)

    # Consumers and the live push subscription came back with the connection.
    async with first.sse() as live:
        await first.place_order()
        assert (await live.next(within=5))["type"] == "order.created"

    for name in SERVICES:
        logs = mesh.processes[name].logs()[logged_before[name] :]
        records = _records(logs)
        assert [r for r in records if r["level"] in ("ERROR", "CRITICAL")] == [], name
        assert "Traceback" not in logs, name
        warnings = [r["message"] for r in records if r["level"] == "WARNING"]
        assert any(m.startswith("connection to the broker lost") for m in warnings), name
        assert any(m.startswith("reconnected to the broker after") for m in warnings), name
