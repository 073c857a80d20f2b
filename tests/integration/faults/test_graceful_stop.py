"""SIGTERM to the orders service under a steady stream of orders through the gateway: the
requests it had accepted complete (gunicorn and uvicorn drain them before the worker exits),
so no client sees a 5xx for those; requests arriving after it stopped listening are refused
by the gateway with a 503 problem and `Retry-After` (they never reached orders: safe to retry),
and every order confirmed with 201 is stored."""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass

import httpx

from meshdev.customers import Customer
from meshdev.stack import RunningMesh

CUSTOMERS = 4
SHUTDOWN_COMPLETE = "Application shutdown complete"
IN_FLIGHT = 2  # requests each customer keeps going


@dataclass
class Attempt:
    started: float
    finished: float
    response: httpx.Response


async def _place_steadily(customer: Customer, attempts: list[Attempt], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.monotonic()
        response = await customer.place_order()
        attempts.append(Attempt(started, time.monotonic(), response))


async def test_sigterm_under_load_completes_the_requests_in_flight(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    customers = await asyncio.gather(*(Customer.register(mesh, http) for _ in range(CUSTOMERS)))
    orders = mesh.processes["orders"]
    shutdowns_before = orders.logs().count(SHUTDOWN_COMPLETE)
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    load = [
        asyncio.create_task(_place_steadily(c, attempts, stop))
        for c in customers
        for _ in range(IN_FLIGHT)
    ]
    try:
        while len(attempts) < 40:
            await asyncio.sleep(0.05)
        signalled = time.monotonic()
        orders.signal(signal.SIGTERM)
        assert orders.process is not None
        exit_code = await asyncio.to_thread(orders.process.wait, 30)
        stopped = time.monotonic()
        await asyncio.sleep(0.5)  # and a little load against the stopped service
    finally:
        stop.set()
        await asyncio.gather(*load)

    assert exit_code == 0
    # The worker finished its lifespan shutdown itself; gunicorn did not kill it at the deadline.
    assert orders.logs().count(SHUTDOWN_COMPLETE) == shutdowns_before + 1
    in_flight = [a for a in attempts if a.started < signalled < a.finished]
    assert in_flight, "no request was in flight at the signal"
    before = [a for a in attempts if a.started < signalled]
    assert {a.response.status_code for a in before} == {201}, [
        a.response.text for a in before if a.response.status_code != 201
    ]
    after = [a for a in attempts if a.started > stopped]
    assert after
    for attempt in after:
        response = attempt.response
        assert response.status_code == 503, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["retry-after"]
    for attempt in attempts:  # nothing between: every answer is a 201 or a clean refusal
        assert attempt.response.status_code in (201, 503), attempt.response.text

    confirmed = [a.response.json()["id"] for a in attempts if a.response.status_code == 201]
    stored = await mesh.fetchval(
        "orders", "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[])", confirmed
    )
    assert stored == len(confirmed)
