from __future__ import annotations

import json
import uuid

import asyncpg
import httpx
import pytest

from meshdev.stack import RunningMesh

ORDER = {
    "items": [
        {"sku": "book-1", "quantity": 2, "unit_price_cents": 1250},
        {"sku": "pen", "quantity": 1, "unit_price_cents": 199},
    ]
}


async def test_placed_order_is_returned_with_its_total(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    response = await client.post("/api/orders", json=ORDER, headers=alice)

    assert response.status_code == 201
    order = response.json()
    assert set(order) == {
        "id",
        "user_id",
        "status",
        "items",
        "total_cents",
        "created_at",
        "updated_at",
    }
    assert order["status"] == "created"
    assert order["total_cents"] == 2 * 1250 + 199
    assert order["items"] == ORDER["items"]


async def test_the_largest_order_the_contract_allows_is_accepted(
    client: httpx.AsyncClient, alice: dict[str, str]
) -> None:
    item = {"sku": "gold", "quantity": 1000, "unit_price_cents": 10_000_000}

    response = await client.post("/api/orders", json={"items": [item] * 100}, headers=alice)

    assert response.status_code == 201
    assert response.json()["total_cents"] == 100 * 1000 * 10_000_000


async def test_order_and_its_event_are_stored_in_one_transaction(
    client: httpx.AsyncClient, alice: dict[str, str], orders_db: asyncpg.Connection
) -> None:
    response = await client.post("/api/orders", json=ORDER, headers=alice)

    order = response.json()
    row = await orders_db.fetchrow("SELECT * FROM outbox")
    assert row["event_type"] == "order.created"
    event = __import__("json").loads(row["event"])
    assert event["specversion"] == "1.0"
    assert event["type"] == "order.created"
    assert event["source"] == "orders"
    assert event["subject"] == order["user_id"]
    assert event["datacontenttype"] == "application/json"
    assert event["data"]["id"] == order["id"]
    assert uuid.UUID(event["id"]) == row["id"]
    # The request's trace continues when the relay publishes the row.
    assert row["traceparent"].split("-")[1] == response.headers["x-trace-id"]


@pytest.mark.parametrize(
    "body",
    [
        {"items": []},
        {"items": [{"sku": "", "quantity": 1, "unit_price_cents": 1}]},
        {"items": [{"sku": "x" * 65, "quantity": 1, "unit_price_cents": 1}]},
        {"items": [{"sku": "a", "quantity": 0, "unit_price_cents": 1}]},
        {"items": [{"sku": "a", "quantity": 1001, "unit_price_cents": 1}]},
        {"items": [{"sku": "a", "quantity": 1, "unit_price_cents": -1}]},
        {"items": [{"sku": "a", "quantity": 1, "unit_price_cents": 10_000_001}]},
        {"items": [{"sku": "a", "quantity": 1, "unit_price_cents": 1}] * 101},
        {"items": [{"sku": "a\x00", "quantity": 1, "unit_price_cents": 1}]},
        {"items": [{"sku": "\udfff", "quantity": 1, "unit_price_cents": 1}]},
        {},
    ],
)
async def test_invalid_order_is_422_and_nothing_is_stored(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    orders_db: asyncpg.Connection,
    body: dict[str, object],
) -> None:
    # json.dumps escapes what httpx's own encoder cannot send (unpaired surrogates).
    response = await client.post(
        "/api/orders",
        content=json.dumps(body),
        headers={**alice, "content-type": "application/json"},
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert await orders_db.fetchval("SELECT count(*) FROM orders") == 0


async def test_orders_require_a_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/orders", json=ORDER)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_users_service_unreachable_is_503_and_nothing_is_stored_or_published(
    client_without_users: httpx.AsyncClient,
    alice: dict[str, str],
    orders_db: asyncpg.Connection,
) -> None:
    response = await client_without_users.post("/api/orders", json=ORDER, headers=alice)

    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    assert await orders_db.fetchval("SELECT count(*) FROM orders") == 0
    assert await orders_db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_list_shows_only_the_callers_orders_newest_first_in_pages(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    placed = [
        (await client.post("/api/orders", json=ORDER, headers=alice)).json()["id"] for _ in range(3)
    ]
    await client.post("/api/orders", json=ORDER, headers=bob)

    first = (await client.get("/api/orders?limit=2", headers=alice)).json()
    second = (
        await client.get(f"/api/orders?limit=2&cursor={first['next_cursor']}", headers=alice)
    ).json()

    assert [o["id"] for o in first["items"] + second["items"]] == placed[::-1]
    assert second["next_cursor"] is None


async def test_another_users_order_is_404_to_read_and_to_cancel(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    order_id = (await client.post("/api/orders", json=ORDER, headers=alice)).json()["id"]

    assert (await client.get(f"/api/orders/{order_id}", headers=bob)).status_code == 404
    assert (await client.post(f"/api/orders/{order_id}/cancel", headers=bob)).status_code == 404
    assert (await client.get(f"/api/orders/{order_id}", headers=alice)).status_code == 200


async def test_cancel_publishes_order_cancelled_and_a_second_cancel_is_409(
    client: httpx.AsyncClient, alice: dict[str, str], orders_db: asyncpg.Connection
) -> None:
    order_id = (await client.post("/api/orders", json=ORDER, headers=alice)).json()["id"]

    cancelled = await client.post(f"/api/orders/{order_id}/cancel", headers=alice)
    again = await client.post(f"/api/orders/{order_id}/cancel", headers=alice)

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert again.status_code == 409
    types = await orders_db.fetch("SELECT event_type FROM outbox ORDER BY created_at")
    assert [r["event_type"] for r in types] == ["order.created", "order.cancelled"]


async def test_a_token_of_a_deleted_account_is_401_and_nothing_is_stored(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    users_mesh: RunningMesh,
    orders_db: asyncpg.Connection,
) -> None:
    user_id = await _me(users_mesh, alice)
    users_db = await asyncpg.connect(users_mesh.database_url("users"))
    try:
        await users_db.execute("DELETE FROM users WHERE id = $1", uuid.UUID(user_id))
    finally:
        await users_db.close()

    response = await client.post("/api/orders", json=ORDER, headers=alice)

    assert response.status_code == 401
    assert await orders_db.fetchval("SELECT count(*) FROM orders") == 0


async def _me(users_mesh: RunningMesh, headers: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=users_mesh.url("users")) as users:
        user_id: str = (await users.get("/api/users/me", headers=headers)).json()["id"]
        return user_id
