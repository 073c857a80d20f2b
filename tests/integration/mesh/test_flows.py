"""The user journeys of the contract, through the gateway only."""

from __future__ import annotations

import json
import uuid

import httpx

from meshdev.customers import ORDER, Customer, eventually

from .conftest import NewCustomer, assert_no_leak

ITEMS = ORDER["items"]


async def test_register_token_order_and_its_notification_in_the_list(
    gateway: httpx.AsyncClient, customer: Customer
) -> None:
    me = await gateway.get("/api/users/me", headers=customer.headers)
    created = await customer.place_order()

    assert me.status_code == 200
    assert me.json() == customer.user
    assert created.status_code == 201, created.text
    order = created.json()
    assert order["user_id"] == customer.id
    assert order["status"] == "created"
    assert order["items"] == ITEMS
    assert order["total_cents"] == 2500
    (registered,) = await customer.notifications_of("user.registered", 1)
    (notified,) = await customer.notifications_of("order.created", 1)
    assert notified["user_id"] == customer.id
    assert notified["read"] is False
    assert uuid.UUID(notified["event_id"]) != uuid.UUID(registered["event_id"])
    fetched = await gateway.get(f"/api/orders/{order['id']}", headers=customer.headers)
    assert fetched.json() == order


async def test_the_notification_arrives_on_the_sse_stream(customer: Customer) -> None:
    async with customer.sse() as stream:
        order = (await customer.place_order()).json()
        notification = await stream.next(within=20)

    assert notification["type"] == "order.created"
    assert notification["user_id"] == customer.id
    assert_no_leak(json.dumps(notification), "an SSE event")
    stored = await customer.notifications_of("order.created", 1)
    assert [n["id"] for n in stored] == [notification["id"]]
    assert order["user_id"] == customer.id


async def test_the_notification_arrives_on_the_websocket(customer: Customer) -> None:
    async with customer.websocket() as stream:
        await customer.place_order()
        notification = await stream.next(within=20)

    assert notification["type"] == "order.created"
    assert notification["user_id"] == customer.id
    stored = await customer.notifications_of("order.created", 1)
    assert [n["id"] for n in stored] == [notification["id"]]


async def test_mark_a_notification_read(gateway: httpx.AsyncClient, customer: Customer) -> None:
    (notification,) = await customer.notifications_of("user.registered", 1)

    response = await gateway.post(
        f"/api/notifications/{notification['id']}/read", headers=customer.headers
    )

    assert response.status_code == 200
    assert response.json() == {**notification, "read": True}
    assert (await customer.notifications())[0]["read"] is True


async def test_cancel_once_then_409_and_one_cancel_notification(
    gateway: httpx.AsyncClient, customer: Customer
) -> None:
    order = (await customer.place_order()).json()

    cancelled = await customer.cancel_order(order["id"])
    again = await customer.cancel_order(order["id"])

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["status"] == 409
    fetched = await gateway.get(f"/api/orders/{order['id']}", headers=customer.headers)
    assert fetched.json()["status"] == "cancelled"
    await customer.notifications_of("order.cancelled", 1)
    await _settled(customer, expected=3)
    types = sorted(n["type"] for n in await customer.notifications())
    assert types == ["order.cancelled", "order.created", "user.registered"]


async def test_idempotent_retry_is_the_same_order_and_one_notification(
    customer: Customer,
) -> None:
    key = uuid.uuid4().hex

    first = await customer.place_order(key=key)
    retry = await customer.place_order(key=key)
    other_body = await customer.place_order(
        {"items": [{"sku": "other", "quantity": 1, "unit_price_cents": 1}]}, key=key
    )

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert other_body.status_code == 422
    assert other_body.headers["content-type"] == "application/problem+json"
    orders = (await customer.orders_page()).json()["items"]
    assert [order["id"] for order in orders] == [first.json()["id"]]
    await customer.notifications_of("order.created", 1)
    await _settled(customer, expected=2)
    assert len(await customer.notifications()) == 2  # user.registered + one order.created


async def test_an_idempotency_key_of_another_user_is_another_order(
    new_customer: NewCustomer,
) -> None:
    key = uuid.uuid4().hex
    alice, bob = await new_customer(), await new_customer()

    mine = await alice.place_order(key=key)
    theirs = await bob.place_order(key=key)

    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["user_id"] == bob.id


async def test_pagination_over_45_orders_has_no_gaps_or_repeats(customer: Customer) -> None:
    created = []
    for i in range(45):
        body = {"items": [{"sku": f"s{i}", "quantity": 1, "unit_price_cents": i}]}
        response = await customer.place_order(body)
        assert response.status_code == 201
        created.append(response.json()["id"])

    pages: list[list[str]] = []
    cursor: str | None = None
    while True:
        response = await customer.orders_page(limit=20, cursor=cursor)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append([order["id"] for order in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert [len(page) for page in pages] == [20, 20, 5]
    seen = [order_id for page in pages for order_id in page]
    assert seen == list(reversed(created))  # newest first, each exactly once
    default_page = (await customer.orders_page()).json()
    assert [o["id"] for o in default_page["items"]] == seen[:20]


async def _settled(customer: Customer, *, expected: int) -> None:
    """Waits for `expected` notifications; any duplicate would show up as more than that
    once the relays had time to send (they send the user's earlier events first)."""

    async def count() -> int | None:
        found = len(await customer.notifications())
        assert found <= expected, f"{found} notifications, expected {expected}"
        return found if found == expected else None

    await eventually(count, within=20)
