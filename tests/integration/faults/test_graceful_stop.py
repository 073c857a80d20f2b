"""SIGTERM to the orders service under a steady stream of orders through the gateway: every
request orders had accepted completes (gunicorn and uvicorn drain them before the worker
exits), so no client sees a 5xx for any of those; requests arriving once it stopped taking new
ones are answered by the gateway with a 503 problem and `Retry-After` (they never reached
orders, so retrying is safe) — or, in HTTP/1.1's keep-alive race, a 502 that promises nothing —
and every order confirmed with 201 is stored."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from dataclasses import dataclass

import httpx

from meshdev.customers import ORDER, Customer, eventually
from meshdev.processes import access_records
from meshdev.stack import RunningMesh

SHUTDOWN_COMPLETE = "Application shutdown complete"
CUSTOMERS = 4
IN_FLIGHT = 2  # requests each customer keeps going


@dataclass
class Attempt:
    request_id: str
    started: float
    finished: float
    response: httpx.Response


async def _place_steadily(
    mesh: RunningMesh,
    http: httpx.AsyncClient,
    customer: Customer,
    attempts: list[Attempt],
    stop: asyncio.Event,
) -> None:
    url = f"{mesh.public_url('orders')}/api/orders"
    while not stop.is_set():
        request_id = uuid.uuid4().hex
        headers = {**customer.headers, "X-Request-ID": request_id}
        started = time.monotonic()
        response = await http.post(url, json=ORDER, headers=headers)
        attempts.append(Attempt(request_id, started, time.monotonic(), response))


async def _at_least(attempts: list[Attempt], count: int) -> bool:
    return len(attempts) >= count


def _handled_by(logs: str) -> set[str]:
    """Request ids of the orders requests a service's access log says it answered."""
    return {
        record["request_id"]
        for record in access_records(logs)
        if "POST /api/orders" in record["message"]
    }


async def test_sigterm_under_load_completes_every_request_it_had_accepted(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    customers = await asyncio.gather(*(Customer.register(mesh, http) for _ in range(CUSTOMERS)))
    orders = mesh.processes["orders"]
    shutdowns_before = orders.logs().count(SHUTDOWN_COMPLETE)
    attempts: list[Attempt] = []
    stop = asyncio.Event()
    load = [
        asyncio.create_task(_place_steadily(mesh, http, c, attempts, stop))
        for c in customers
        for _ in range(IN_FLIGHT)
    ]
    try:
        await eventually(lambda: _at_least(attempts, 40))  # steady load first
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
    handled = _handled_by(orders.logs())
    accepted = [a for a in attempts if a.request_id in handled]
    assert {a.response.status_code for a in accepted} == {201}
    drained = [a for a in accepted if a.started < signalled < a.finished]
    assert drained, "no request was in flight at the signal"
    for attempt in attempts:
        if attempt.request_id in handled:
            continue
        # Never reached orders. Refused or reset: the gateway knows the request was not taken
        # and says so (503, Retry-After). The one exception is HTTP/1.1's keep-alive race:
        # orders closed an idle kept-alive connection just as the gateway sent on it, and an
        # upstream that read the request and died looks the same from the gateway (the
        # connection ends without an answer), so it answers 502 and claims no safe retry.
        response = attempt.response
        assert response.headers["content-type"] == "application/problem+json"
        if response.status_code == 502:
            assert response.json()["detail"] == "The orders service sent no valid answer."
            assert attempt.started < stopped
            continue
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
    after_stop = [a for a in attempts if a.started > stopped]
    assert after_stop
    assert {a.response.status_code for a in after_stop} == {503}  # connection refused

    confirmed = [a.response.json()["id"] for a in accepted]
    stored = await mesh.fetchval(
        "orders", "SELECT count(*) FROM orders WHERE id = ANY($1::uuid[])", confirmed
    )
    assert stored == len(confirmed)
