"""`Idempotency-Key`: same key and body → same order; other body → 422; in flight → 409."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

ORDER = {"items": [{"sku": "book-1", "quantity": 1, "unit_price_cents": 1000}]}
OTHER = {"items": [{"sku": "book-2", "quantity": 1, "unit_price_cents": 1000}]}


def _key() -> dict[str, str]:
    return {"Idempotency-Key": f"checkout-{uuid.uuid4()}"}


async def test_a_retry_with_the_same_key_and_body_returns_the_same_order_and_stores_nothing(
    client: httpx.AsyncClient, alice: dict[str, str], orders_db: asyncpg.Connection
) -> None:
    headers = {**alice, **_key()}

    first = await client.post("/api/orders", json=ORDER, headers=headers)
    retry = await client.post("/api/orders", json=ORDER, headers=headers)

    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert await orders_db.fetchval("SELECT count(*) FROM orders") == 1
    assert await orders_db.fetchval("SELECT count(*) FROM outbox") == 1


async def test_the_same_key_with_another_body_is_422(
    client: httpx.AsyncClient, alice: dict[str, str], orders_db: asyncpg.Connection
) -> None:
    headers = {**alice, **_key()}
    await client.post("/api/orders", json=ORDER, headers=headers)

    response = await client.post("/api/orders", json=OTHER, headers=headers)

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"] == [
        {
            "loc": ["header", "idempotency-key"],
            "msg": "This Idempotency-Key was already used with a different request body.",
            "type": "idempotency_key_reused",
        }
    ]
    assert await orders_db.fetchval("SELECT count(*) FROM orders") == 1


async def test_the_same_key_of_another_user_is_another_order(
    client: httpx.AsyncClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    key = _key()

    mine = await client.post("/api/orders", json=ORDER, headers={**alice, **key})
    theirs = await client.post("/api/orders", json=ORDER, headers={**bob, **key})

    assert theirs.status_code == 201
    assert theirs.json()["id"] != mine.json()["id"]


async def test_the_same_key_while_the_first_request_is_in_flight_is_409(
    client: httpx.AsyncClient,
    alice: dict[str, str],
    orders_db: asyncpg.Connection,
) -> None:
    key = _key()
    user_id = await _user_id(client, alice)
    # The first request holds the key's lock for as long as its transaction is open.
    async with orders_db.transaction():
        await orders_db.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            f"orders:{user_id}:{key['Idempotency-Key']}",
        )
        response = await client.post("/api/orders", json=ORDER, headers={**alice, **key})

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    after = await client.post("/api/orders", json=ORDER, headers={**alice, **key})
    assert after.status_code == 201


async def test_an_invalid_key_is_422(client: httpx.AsyncClient, alice: dict[str, str]) -> None:
    response = await client.post(
        "/api/orders", json=ORDER, headers={**alice, "Idempotency-Key": "k" * 256}
    )

    assert response.status_code == 422


async def _user_id(client: httpx.AsyncClient, headers: dict[str, str]) -> str:
    order = (await client.post("/api/orders", json=ORDER, headers=headers)).json()
    user_id: str = order["user_id"]
    return user_id
