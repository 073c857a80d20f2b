"""Faults of the mesh in containers, as an operator meets them: a container killed, the broker's
and the database's containers restarted, each during a stream of orders through the gateway.

Every acknowledged order is stored once and notified exactly once; the database's outage is
answered with 503 + `Retry-After`; an outage the processes recover from by themselves is logged
as warnings, never as an `ERROR` or a traceback. The stack is left running and healthy for the
next test (the `containers` target of tests/integration/mesh shares it)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import pytest

from meshdev.containers import ContainerMesh
from meshdev.customers import Customer, eventually
from meshdev.docker import docker

CUSTOMERS = 4
ORDERS_EACH = 25
SERVICES = ("users", "orders", "notifications", "gateway")


@pytest.fixture
def mesh(containerised_mesh: ContainerMesh) -> Iterator[ContainerMesh]:
    yield containerised_mesh
    containerised_mesh.up()  # whatever the test stopped is running and healthy again


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@dataclass
class Placed:
    customer: Customer
    key: str
    response: httpx.Response


async def _customers(mesh: ContainerMesh, http: httpx.AsyncClient) -> list[Customer]:
    customers = await asyncio.gather(*(Customer.register(mesh, http) for _ in range(CUSTOMERS)))
    await asyncio.gather(*(c.notifications_of("user.registered", 1) for c in customers))
    return list(customers)


async def _place_all(customers: list[Customer]) -> list[Placed]:
    slots = asyncio.Semaphore(8)

    async def place(customer: Customer) -> Placed:
        key = str(uuid.uuid4())
        async with slots:
            return Placed(customer, key, await customer.place_order(key=key))

    return list(await asyncio.gather(*(place(c) for c in customers for _ in range(ORDERS_EACH))))


def _ids(customers: list[Customer]) -> str:
    """A psql variable for `= ANY(string_to_array(:'ids', ','))`."""
    return ",".join(c.id for c in customers)


def _processed(mesh: ContainerMesh, customers: list[Customer]) -> int:
    """Order notifications stored so far, read in the database: asking through the gateway
    while notifications is down would (rightly) open its circuit."""
    return int(
        mesh.sql_value(
            "notifications",
            "SELECT count(*) FROM notifications"
            " WHERE type = 'order.created' AND user_id::text = ANY(string_to_array(:'ids', ','))",
            ids=_ids(customers),
        )
    )


async def _each_acknowledged_order_notified_once(
    mesh: ContainerMesh, customers: list[Customer], placed: list[Placed]
) -> None:
    acknowledged = [p for p in placed if p.response.status_code == 201]
    per_customer = {c.id: sum(p.customer is c for p in acknowledged) for c in customers}
    await asyncio.gather(
        *(c.notifications_of("order.created", per_customer[c.id], within=90) for c in customers)
    )
    event_of_order = dict(
        mesh.sql(
            "orders",
            "SELECT event->'data'->>'id', id::text FROM outbox"
            " WHERE event_type = 'order.created'"
            " AND event->>'subject' = ANY(string_to_array(:'ids', ','))",
            ids=_ids(customers),
        )
    )
    stored = {p.response.json()["id"] for p in acknowledged}
    assert set(event_of_order) == stored, "an order without its event, or an event without order"
    notified = [
        n["event_id"]
        for c in customers
        for n in await c.notifications()
        if n["type"] == "order.created"
    ]
    assert sorted(notified) == sorted(event_of_order[order] for order in stored)
    # Each notification was announced once: a redelivered event stored and published nothing.
    announced = mesh.sql_value(
        "notifications",
        "SELECT count(*) FROM outbox WHERE event_type = 'notification.created'"
        " AND event->>'subject' = ANY(string_to_array(:'ids', ','))",
        ids=_ids(customers),
    )
    assert int(announced) == len(acknowledged) + CUSTOMERS  # + the welcome notifications


def _problems_since(mesh: ContainerMesh, since: str) -> list[str]:
    """Log records at ERROR or above, and tracebacks, of every deployable since `since`."""
    found = []
    for service in SERVICES:
        answer = docker("logs", "--since", since, mesh.container(service))
        for line in (answer.stdout + answer.stderr).splitlines():
            if "Traceback" in line:
                found.append(f"{service}: {line[:300]}")
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("level") in ("ERROR", "CRITICAL"):
                found.append(f"{service}: {line[:300]}")
    return found


def _warnings_since(mesh: ContainerMesh, since: str) -> list[str]:
    lines = []
    for service in SERVICES:
        answer = docker("logs", "--since", since, mesh.container(service))
        lines += [line for line in answer.stdout.splitlines() if '"level": "WARNING"' in line]
    return lines


def _now() -> str:
    return str(int(time.time()) - 1)


async def test_the_notifications_container_killed_mid_stream_loses_and_repeats_nothing(
    mesh: ContainerMesh, http: httpx.AsyncClient
) -> None:
    customers = await _customers(mesh, http)
    placing = asyncio.create_task(_place_all(customers))

    await eventually(
        lambda: asyncio.to_thread(lambda: _processed(mesh, customers) >= 5), every=0.05
    )
    docker("kill", mesh.container("notifications"))
    processed_before_the_kill = _processed(mesh, customers)
    placed = await placing
    mesh.up("notifications")

    assert [p.response.status_code for p in placed] == [201] * len(placed)
    assert processed_before_the_kill < len(placed)  # killed mid-stream
    await _each_acknowledged_order_notified_once(mesh, customers, placed)


async def test_the_broker_container_restarted_mid_stream_loses_and_repeats_nothing(
    mesh: ContainerMesh, http: httpx.AsyncClient
) -> None:
    customers = await _customers(mesh, http)
    since = _now()
    placing = asyncio.create_task(_place_all(customers))

    await eventually(
        lambda: asyncio.to_thread(lambda: _processed(mesh, customers) >= 5), every=0.05
    )
    await asyncio.to_thread(docker, "restart", mesh.container("rabbitmq"))
    placed = await placing
    mesh.up()

    # Orders are written with their events (the outbox): the broker's absence refuses none.
    assert [p.response.status_code for p in placed] == [201] * len(placed)
    await _each_acknowledged_order_notified_once(mesh, customers, placed)
    assert _problems_since(mesh, since) == []
    assert _warnings_since(mesh, since), "the outage was not logged at all"


async def test_the_database_container_restarted_is_503_meanwhile_and_loses_nothing(
    mesh: ContainerMesh, http: httpx.AsyncClient
) -> None:
    customers = await _customers(mesh, http)
    await asyncio.to_thread(docker, "stop", mesh.container("postgres"))
    try:
        during = await _place_all(customers[:1])
        read = await http.get(f"{mesh.gateway_url}/api/orders", headers=customers[0].headers)
    finally:
        await asyncio.to_thread(docker, "start", mesh.container("postgres"))
    mesh.up()

    for answer in (read, *(p.response for p in during)):
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "1"

    # Retried with their keys once the database is back, the refused orders are placed once.
    async def retried(placed: Placed) -> Placed:
        return Placed(
            placed.customer, placed.key, await placed.customer.place_order(key=placed.key)
        )

    after = [await retried(p) for p in during]
    after += await _place_all(customers)
    assert [p.response.status_code for p in after] == [201] * len(after)
    counts = mesh.sql(
        "orders",
        "SELECT count(*) FROM orders WHERE idempotency_key = ANY(string_to_array(:'keys', ','))"
        " GROUP BY idempotency_key",
        keys=",".join(p.key for p in after),
    )
    assert [int(n) for (n,) in counts] == [1] * len(after)
    await _each_acknowledged_order_notified_once(mesh, customers, after)
