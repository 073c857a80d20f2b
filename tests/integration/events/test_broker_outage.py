"""With RabbitMQ unreachable, orders are still accepted; once it is back, every event is
published and every notification appears exactly once. The outage is a fault proxy between
the services and the machine's broker, which is never touched."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from meshdev.customers import Customer, eventually
from meshdev.faults import TcpProxy
from meshdev.rabbitmq import BROKER_URL
from meshdev.stack import RunningMesh, running_mesh

ORDERS_DURING_OUTAGE = 10


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    broker = urlsplit(BROKER_URL)
    proxy = await TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672).start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def mesh_behind_proxy(tmp_path: Path, proxy: TcpProxy) -> AsyncIterator[RunningMesh]:
    async with running_mesh(tmp_path, broker_port=proxy.port) as mesh:
        yield mesh


async def _unsent(mesh: RunningMesh, service: str) -> int:
    connection = await asyncpg.connect(mesh.database_url(service))
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        return count
    finally:
        await connection.close()


async def test_orders_during_an_outage_are_published_and_notified_exactly_once_after_it(
    mesh_behind_proxy: RunningMesh, proxy: TcpProxy, http: httpx.AsyncClient
) -> None:
    mesh = mesh_behind_proxy
    customer = await Customer.register(mesh, http)
    await customer.notifications_of("user.registered", 1)

    await proxy.cut()

    async def orders_not_ready() -> bool:
        response = await http.get(f"{mesh.url('orders')}/readyz")
        return response.status_code == 503 and "broker" in response.json()["detail"]

    await eventually(orders_not_ready)
    placed = [await customer.place_order() for _ in range(ORDERS_DURING_OUTAGE)]
    assert [response.status_code for response in placed] == [201] * ORDERS_DURING_OUTAGE
    cancelled = await http.post(
        f"{mesh.url('orders')}/api/orders/{placed[0].json()['id']}/cancel",
        headers=customer.headers,
    )
    assert cancelled.status_code == 200
    assert await _unsent(mesh, "orders") == ORDERS_DURING_OUTAGE + 1

    await proxy.restore()

    await customer.notifications_of("order.created", ORDERS_DURING_OUTAGE, within=90)
    await customer.notifications_of("order.cancelled", 1, within=30)

    async def all_sent() -> bool:
        return all([await _unsent(mesh, name) == 0 for name in ("orders", "notifications")])

    await eventually(all_sent)
    notifications = await customer.notifications()
    created = [n for n in notifications if n["type"] == "order.created"]
    assert len(created) == ORDERS_DURING_OUTAGE
    assert {n["message"].split()[2] for n in created} == {
        response.json()["id"][:8] for response in placed
    }
    assert len(notifications) == ORDERS_DURING_OUTAGE + 2  # + welcome + cancellation
    assert len({n["event_id"] for n in notifications}) == len(notifications)

    # Consumers and the live push subscription were restored with the connection.
    async with customer.sse() as live:
        await customer.place_order()
        assert (await live.next(within=5))["type"] == "order.created"
