"""Listing and marking notifications as read: each user sees only their own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from meshdev.customers import Account, eventually
from meshkit.messaging import CloudEvent

Publish = Callable[..., Awaitable[None]]
OrderEvent = Callable[..., CloudEvent]


async def _wait_for(
    client: httpx.AsyncClient, account: Account, count: int
) -> list[dict[str, str]]:
    async def probe() -> list[dict[str, str]] | None:
        items: list[dict[str, str]] = (
            await client.get("/api/notifications", headers=account.headers)
        ).json()["items"]
        return items if len(items) == count else None

    return await eventually(probe)


async def test_list_shows_only_the_callers_notifications_newest_first_in_pages(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    bob: Account,
) -> None:
    for _ in range(3):
        await publish(order_event(alice.id))
    await publish(order_event(bob.id))
    await _wait_for(client, alice, 3)

    first = (await client.get("/api/notifications?limit=2", headers=alice.headers)).json()
    second = (
        await client.get(
            f"/api/notifications?limit=2&cursor={first['next_cursor']}", headers=alice.headers
        )
    ).json()

    items = first["items"] + second["items"]
    assert len(items) == 3
    assert all(item["user_id"] == alice.id for item in items)
    assert [i["created_at"] for i in items] == sorted(
        (i["created_at"] for i in items), reverse=True
    )
    assert second["next_cursor"] is None


async def test_mark_read_sets_read_and_another_users_notification_is_404(
    client: httpx.AsyncClient,
    publish: Publish,
    order_event: OrderEvent,
    alice: Account,
    bob: Account,
) -> None:
    await publish(order_event(alice.id))
    [notification] = await _wait_for(client, alice, 1)

    by_bob = await client.post(f"/api/notifications/{notification['id']}/read", headers=bob.headers)
    by_alice = await client.post(
        f"/api/notifications/{notification['id']}/read", headers=alice.headers
    )

    assert by_bob.status_code == 404
    assert by_bob.headers["content-type"] == "application/problem+json"
    assert by_alice.status_code == 200
    assert by_alice.json()["read"] is True


async def test_notifications_require_a_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/notifications")

    assert response.status_code == 401
