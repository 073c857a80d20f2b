"""A poison message: an event the notifications service cannot store until something is
repaired. It must not block the queue, must land in the dead-letter queue after the delivery
limit, and the operator's replay tool (`python -m notifications_service.dlq`) must recover it
once the cause is fixed, with exactly one notification in the end.

The poison, as it happens in real life: a release adds a data-quality rule to the
notifications table (messages at most 40 characters, `NOT VALID`, so existing rows pass) that
is too strict for order notifications ("Your order 1a2b3c4d was placed (total 25.00)." is 45
characters) while welcome messages still fit. Every `order.created` fails on every delivery.
The fix is the corrective migration that drops the rule; then the operator replays the DLQ."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from meshdev.customers import Customer, eventually
from meshdev.processes import ServiceProcess
from meshdev.rabbitmq import amqp_url
from meshdev.stack import RunningMesh
from notifications_service.dlq import DeadLetter, list_dead_letters

RULE = "ck_notifications_message_short"
# Retries come quickly here, so the poison reaches the DLQ within seconds (default: ~30 s).
QUICK_RETRIES = {"RETRY_DELAY_SECONDS": "0.05"}


async def _restart(process: ServiceProcess, env: dict[str, str]) -> None:
    await asyncio.to_thread(process.stop)
    process.env = env
    process.start()
    await asyncio.to_thread(process.wait_ready)


@pytest.fixture
async def quick_retries(mesh: RunningMesh) -> AsyncIterator[RunningMesh]:
    notifications = mesh.processes["notifications"]
    usual = dict(notifications.env)
    await _restart(notifications, {**usual, **QUICK_RETRIES})
    try:
        yield mesh
    finally:
        await _restart(notifications, usual)


@pytest.fixture
async def strict_rule(quick_retries: RunningMesh) -> AsyncIterator[asyncpg.Connection]:
    """The faulty release's migration, as a DBA would apply it; dropped again in any case."""
    connection = await asyncpg.connect(quick_retries.database_url("notifications"))
    await connection.execute(
        f"ALTER TABLE notifications ADD CONSTRAINT {RULE}"
        " CHECK (char_length(message) <= 40) NOT VALID"
    )
    try:
        yield connection
    finally:
        await connection.execute(f"ALTER TABLE notifications DROP CONSTRAINT IF EXISTS {RULE}")
        await connection.close()


async def _dlq(mesh: RunningMesh, *args: str) -> str:
    """The operator's tool, run as documented (against the mesh's vhost, directly)."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "notifications_service.dlq", *args],
        env={**os.environ, "RABBITMQ_URL": amqp_url(mesh.vhost), "ENVIRONMENT": "test"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout


async def test_a_poison_event_is_dead_lettered_and_replayed_once_the_cause_is_fixed(
    quick_retries: RunningMesh, strict_rule: asyncpg.Connection, http: httpx.AsyncClient
) -> None:
    mesh = quick_retries
    alice = await Customer.register(mesh, http)
    await alice.notifications_of("user.registered", 1)

    placed = await alice.place_order()
    assert placed.status_code == 201  # the order itself is fine; only its notification fails
    order_id = placed.json()["id"]
    event_id = await mesh.fetchval(
        "orders",
        "SELECT id::text FROM outbox WHERE event_type = 'order.created'"
        " AND event->'data'->>'id' = $1",
        order_id,
    )

    async def dead_lettered() -> list[DeadLetter] | None:
        # Waiting in-process; the operator's own look at the DLQ follows below.
        return await list_dead_letters(amqp_url(mesh.vhost), "notifications") or None

    await eventually(dead_lettered, within=30, every=0.2)
    letters = [json.loads(line) for line in (await _dlq(mesh, "list")).splitlines()]
    assert [(d["message_id"], d["reason"]) for d in letters] == [(event_id, "delivery_limit")]
    # The queue is not blocked: a new customer is still welcomed meanwhile.
    bob = await Customer.register(mesh, http)
    await bob.notifications_of("user.registered", 1)
    assert [n["type"] for n in await alice.notifications()] == ["user.registered"]

    # The fix: the corrective migration drops the rule; then the operator replays.
    await strict_rule.execute(f"ALTER TABLE notifications DROP CONSTRAINT {RULE}")
    replayed = await _dlq(mesh, "replay", "--all")

    assert f"replayed 1 message(s): {event_id}" in replayed
    created = await alice.notifications_of("order.created", 1)
    assert [n["event_id"] for n in created] == [event_id]
    assert order_id[:8] in created[0]["message"]
    assert await _dlq(mesh, "list") == ""
    # Replaying again (an operator's double click) changes nothing: the DLQ is empty.
    assert "replayed 0 message(s)" in await _dlq(mesh, "replay", "--all")
    assert len([n for n in await alice.notifications() if n["type"] == "order.created"]) == 1
