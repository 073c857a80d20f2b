"""The users service killed (SIGKILL): placing an order answers 503 at once (orders cannot
confirm the account, so nothing is stored), the gateway's circuit for users opens and answers
its routes with a fast 503 and `Retry-After`; once users runs again on its port the circuit
closes and orders succeed again."""

from __future__ import annotations

import asyncio
import time

import httpx

from meshdev.customers import Customer, eventually
from meshdev.stack import RunningMesh

QUICKLY = 5.0  # seconds; well under the gateway's upstream timeout (10 s)


def _assert_retryable_problem(response: httpx.Response) -> dict[str, object]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    body: dict[str, object] = response.json()
    return body


async def test_users_down_fails_orders_fast_opens_the_circuit_and_recovers_after_restart(
    mesh: RunningMesh, http: httpx.AsyncClient
) -> None:
    alice = await Customer.register(mesh, http)
    assert (await alice.place_order()).status_code == 201
    gateway = mesh.public_url("users")

    await asyncio.to_thread(mesh.processes["users"].kill)

    started = time.monotonic()
    refused = await alice.place_order()
    assert time.monotonic() - started < QUICKLY
    _assert_retryable_problem(refused)
    stored = await mesh.fetchval(
        "orders", "SELECT count(*) FROM orders WHERE user_id = $1::uuid", alice.id
    )
    assert stored == 1  # only the order placed before

    async def circuit_open() -> dict[str, object] | None:
        response = await http.get(f"{gateway}/api/users/me", headers=alice.headers)
        body = _assert_retryable_problem(response)
        return body if "paused" in str(body["detail"]) else None

    await eventually(circuit_open, every=0.05)
    started = time.monotonic()
    fast = await http.get(f"{gateway}/api/users/{alice.id}", headers=alice.headers)
    assert time.monotonic() - started < QUICKLY
    assert "paused" in str(_assert_retryable_problem(fast)["detail"])
    ready = await http.get(f"{gateway}/readyz")
    assert ready.status_code == 503
    assert "users" in ready.json()["detail"]

    users = mesh.processes["users"]
    users.start()
    await asyncio.to_thread(users.wait_ready)

    async def circuit_closed() -> bool:
        response = await http.get(f"{gateway}/api/users/me", headers=alice.headers)
        return response.status_code == 200

    await eventually(circuit_closed)
    assert (await http.get(f"{gateway}/readyz")).status_code == 200
    placed = await alice.place_order()
    assert placed.status_code == 201, placed.text
    await alice.notifications_of("order.created", 2)
