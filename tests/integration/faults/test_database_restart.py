"""PostgreSQL restarting (every service's database link cut, then back) under a steady stream
of orders: each service's `/readyz` answers 503 naming the database while it lasts and 200
after; requests meanwhile get 503 problems with `Retry-After` quickly — no hang, no 500 — and
no order is half written: every order has its event and every event its order. Retried with the
same `Idempotency-Key` after the restart, every refused order ends as exactly one order."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import httpx

from meshdev.customers import ORDER, Customer, eventually
from meshdev.faults import TcpProxy
from meshdev.stack import RunningMesh

CUSTOMERS = 4
QUICKLY = 5.0  # seconds; well under the gateway's upstream timeout (10 s)
SERVICES = ("users", "orders", "notifications")


@dataclass
class Attempt:
    customer: Customer
    key: str
    status: int
    seconds: float
    response: httpx.Response


async def _place_steadily(customer: Customer, attempts: list[Attempt], stop: asyncio.Event) -> None:
    while not stop.is_set():
        key = str(uuid.uuid4())
        started = time.monotonic()
        response = await customer.place_order(key=key)
        attempts.append(
            Attempt(customer, key, response.status_code, time.monotonic() - started, response)
        )
        await asyncio.sleep(0.05)


async def _at_least(attempts: list[Attempt], count: int) -> bool:
    return len(attempts) >= count


async def _readiness(mesh: RunningMesh, http: httpx.AsyncClient) -> dict[str, httpx.Response]:
    return {name: await http.get(f"{mesh.url(name)}/readyz") for name in SERVICES}


async def test_a_database_restart_is_503_while_it_lasts_and_leaves_no_half_written_order(
    mesh: RunningMesh, database_link: TcpProxy, http: httpx.AsyncClient
) -> None:
    customers = await asyncio.gather(*(Customer.register(mesh, http) for _ in range(CUSTOMERS)))
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    load = [asyncio.create_task(_place_steadily(c, attempts, stop)) for c in customers]
    try:
        await eventually(lambda: _at_least(attempts, 10))
        await database_link.cut()

        async def all_unready() -> dict[str, httpx.Response] | None:
            answers = await _readiness(mesh, http)
            down = all(
                r.status_code == 503 and "database" in r.json()["detail"] for r in answers.values()
            )
            return answers if down else None

        await eventually(all_unready)
        during = len(attempts)
        # The edge stays in rotation: its upstreams are alive, only their database is not.
        assert (await http.get(f"{mesh.url('gateway')}/readyz")).status_code == 200
        reads = [
            await http.get(f"{mesh.public_url('orders')}/api/orders", headers=customers[0].headers),
            await http.get(
                f"{mesh.public_url('users')}/api/users/me", headers=customers[0].headers
            ),
            await http.get(
                f"{mesh.public_url('notifications')}/api/notifications",
                headers=customers[0].headers,
            ),
        ]
        await eventually(lambda: _at_least(attempts, during + 8))

        await database_link.restore()

        async def all_ready() -> bool:
            answers = await _readiness(mesh, http)
            return all(r.status_code == 200 for r in answers.values())

        await eventually(all_ready, within=30)
        after = len(attempts)
        await eventually(lambda: _at_least(attempts, after + 8))
    finally:
        stop.set()
        await asyncio.gather(*load)

    for read in reads:
        assert read.status_code == 503, read.text
        assert read.headers["content-type"] == "application/problem+json"
        assert read.headers["retry-after"] == "1"
    statuses = {a.status for a in attempts}
    assert statuses <= {201, 503}, [a.response.text for a in attempts if a.status not in (201, 503)]
    refused = [a for a in attempts if a.status == 503]
    assert refused, "no order was placed while the database was away"
    for attempt in refused:
        assert attempt.response.headers["content-type"] == "application/problem+json"
        assert attempt.response.headers["retry-after"] == "1"
    assert max(a.seconds for a in attempts) < QUICKLY
    assert attempts[-1].status == 201  # placing works again

    # The client retries what was refused, with the same key: each key ends as one order.
    for attempt in refused:
        retried = await attempt.customer.place_order(ORDER, key=attempt.key)
        assert retried.status_code == 201, retried.text
    keys = {a.key for a in attempts}
    rows = await mesh.fetch(
        "orders",
        "SELECT idempotency_key, count(*) AS n FROM orders"
        " WHERE idempotency_key = ANY($1::text[]) GROUP BY idempotency_key",
        list(keys),
    )
    assert {r["idempotency_key"] for r in rows} == keys
    assert {r["n"] for r in rows} == {1}

    # No half-written order: orders and their `order.created` events match one to one.
    orphans = await mesh.fetchval(
        "orders",
        """
        SELECT count(*) FROM orders o FULL JOIN (
            SELECT (event->'data'->>'id')::uuid AS order_id FROM outbox
            WHERE event_type = 'order.created'
        ) e ON e.order_id = o.id
        WHERE o.id IS NULL OR e.order_id IS NULL
        """,
    )
    assert orphans == 0
    for customer in customers:
        ordered = await mesh.fetchval(
            "orders", "SELECT count(*) FROM orders WHERE user_id = $1::uuid", customer.id
        )
        await customer.notifications_of("order.created", ordered, within=30)
