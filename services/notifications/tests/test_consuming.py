"""Events become notifications: exactly once, malformed ones and poison ones in the DLQ."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshdev.customers import Account, eventually
from meshdev.rabbitmq import amqp_url
from meshkit.messaging import CloudEvent
from notifications_service.dlq import DeadLetter, list_dead_letters

Publish = Callable[..., Awaitable[None]]
OrderEvent = Callable[..., CloudEvent]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


async def _notifications(client: httpx.AsyncClient, account: Account) -> list[dict[str, object]]:
    response = await client.get("/api/notifications", headers=account.headers)
    assert response.status_code == 200
    items: list[dict[str, object]] = response.json()["items"]
    return items


def _process_spans(spans: InMemorySpanExporter, event_id: object) -> list[ReadableSpan]:
    return [
        span
        for span in spans.get_finished_spans()
        if span.name == "process notifications"
        and (span.attributes or {}).get("messaging.message.id") == str(event_id)
    ]


def _processed(spans: InMemorySpanExporter, event_id: object) -> int:
    return len(_process_spans(spans, event_id))


async def test_each_event_type_makes_one_notification_for_its_user(
    client: httpx.AsyncClient, publish: Publish, order_event: OrderEvent, alice: Account
) -> None:
    events = [
        CloudEvent(
            source="users",
            type="user.registered",
            subject=alice.id,
            data={"id": alice.id, "name": "Ada"},
        ),
        order_event(alice.id, "order.created"),
        order_event(alice.id, "order.cancelled"),
    ]
    for event in events:
        await publish(event)

    async def three() -> list[dict[str, object]] | None:
        items = await _notifications(client, alice)
        return items if len(items) == 3 else None

    items = await eventually(three)
    by_type = {item["type"]: item for item in items}
    assert set(by_type) == {"user.registered", "order.created", "order.cancelled"}
    assert {item["event_id"] for item in items} == {str(e.id) for e in events}
    assert by_type["user.registered"]["message"] == "Welcome to the mesh, Ada!"
    assert "was cancelled" in str(by_type["order.cancelled"]["message"])
    assert all(item["user_id"] == alice.id and item["read"] is False for item in items)


async def test_processing_continues_the_trace_of_the_message(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    spans: InMemorySpanExporter,
    db: asyncpg.Connection,
) -> None:
    event = order_event(alice.id)
    await publish(event, headers={"traceparent": TRACEPARENT})

    await eventually(lambda: _notifications(client, alice))

    async def finished() -> list[ReadableSpan]:
        # The span ends after the batch's ack, which may come after the notification shows.
        return _process_spans(spans, event.id)

    process = (await eventually(finished))[0]
    assert process.kind == SpanKind.CONSUMER
    assert format(process.context.trace_id, "032x") == TRACE_ID
    assert process.parent is not None
    assert format(process.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert (process.attributes or {})["messaging.system"] == "rabbitmq"
    # notification.created, written while processing, carries the same trace on.
    traceparent = await db.fetchval(
        "SELECT traceparent FROM outbox WHERE event_type = 'notification.created'"
    )
    assert traceparent.split("-")[1] == TRACE_ID


async def test_the_same_event_delivered_twice_makes_one_notification(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    spans: InMemorySpanExporter,
    db: asyncpg.Connection,
) -> None:
    event = order_event(alice.id)

    await publish(event)
    await publish(event)

    async def both_processed() -> bool:
        return _processed(spans, event.id) == 2

    await eventually(both_processed)
    assert len(await _notifications(client, alice)) == 1
    assert await db.fetchval("SELECT count(*) FROM outbox") == 1


async def test_a_malformed_message_goes_straight_to_the_dead_letter_queue(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    vhost: str,
    spans: InMemorySpanExporter,
) -> None:
    broken = order_event(alice.id).model_copy(update={"subject": "not-a-user-id"})
    await publish(body=b"{not json", routing_key="order.created")
    await publish(broken)

    async def dead_letters() -> list[DeadLetter] | None:
        found = await list_dead_letters(amqp_url(vhost), "notifications")
        return found if len(found) == 2 else None

    found = await eventually(dead_letters)
    assert {d.reason for d in found} == {"rejected"}
    assert _processed(spans, broken.id) == 1  # not retried
    assert await _notifications(client, alice) == []


async def test_events_no_handler_can_take_are_dead_lettered_alone_with_their_reason(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    bob: Account,
    vhost: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = order_event(alice.id)
    refused = [
        (order_event(alice.id, "order.shipped"), "no handler for events of type order.shipped"),
        (order_event(alice.id, total_cents="lots"), "total_cents"),
        (
            order_event(bob.id, "order.cancelled").model_copy(update={"subject": alice.id}),
            "the order's user is not the subject",
        ),
    ]
    with caplog.at_level(logging.ERROR, logger="meshkit.messaging.consumer"):
        for event in [*(e for e, _ in refused), good]:
            await publish(event)

        async def dead_letters() -> list[DeadLetter] | None:
            found = await list_dead_letters(amqp_url(vhost), "notifications")
            return found if len(found) == len(refused) else None

        found = await eventually(dead_letters)
    assert {d.message_id for d in found} == {str(e.id) for e, _ in refused}
    assert {d.reason for d in found} == {"rejected"}
    items = await eventually(lambda: _notifications(client, alice))
    assert [item["event_id"] for item in items] == [str(good.id)]
    logged = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    for event, reason in refused:
        assert any(str(event.id) in line and reason in line for line in logged), reason


async def test_a_message_that_keeps_failing_is_dead_lettered_and_replayed_after_the_fix(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    vhost: str,
    db: asyncpg.Connection,
) -> None:
    # A defect every attempt hits: the table refuses every insert.
    await db.execute("ALTER TABLE notifications ADD CONSTRAINT ck_broken CHECK (false) NOT VALID")
    event = order_event(alice.id)
    await publish(event)
    url = amqp_url(vhost)

    async def dead_lettered() -> list[DeadLetter] | None:
        return await list_dead_letters(url, "notifications") or None

    found = await eventually(dead_lettered)
    assert [d.message_id for d in found] == [str(event.id)]
    assert [d.reason for d in found] == ["delivery_limit"]

    await db.execute("ALTER TABLE notifications DROP CONSTRAINT ck_broken")
    listed = await _dlq("list", url=url)
    assert json.loads(listed.splitlines()[0])["message_id"] == str(event.id)
    replayed = await _dlq("replay", str(event.id), url=url)

    assert f"replayed 1 message(s): {event.id}" in replayed
    items = await eventually(lambda: _notifications(client, alice))
    assert [item["event_id"] for item in items] == [str(event.id)]
    assert await list_dead_letters(url, "notifications") == []


async def _dlq(*args: str, url: str) -> str:
    """The DLQ tool, run as an operator would."""
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "notifications_service.dlq", *args],
        env={**os.environ, "RABBITMQ_URL": url, "ENVIRONMENT": "test"},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout
