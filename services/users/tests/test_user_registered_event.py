"""Registration publishes `user.registered` through the outbox, in the same transaction."""

from __future__ import annotations

import json

import asyncpg
import httpx

from meshdev.api import PASSWORD, UsersApi
from meshdev.postgres import asyncpg_dsn


async def _events(users_database: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(users_database))
    try:
        rows: list[asyncpg.Record] = await connection.fetch(
            "SELECT * FROM outbox ORDER BY created_at"
        )
        return rows
    finally:
        await connection.close()


async def test_registration_writes_one_user_registered_event_without_secrets(
    client: httpx.AsyncClient, users_database: str
) -> None:
    response = await client.post(
        "/api/users", json={"email": "ada@example.com", "password": PASSWORD, "name": "Ada"}
    )

    [row] = await _events(users_database)
    event = json.loads(row["event"])
    assert row["event_type"] == event["type"] == "user.registered"
    assert event["subject"] == response.json()["id"]
    assert event["source"] == "users"
    assert event["data"] == response.json()
    assert "argon2" not in row["event"]
    assert row["traceparent"].split("-")[1] == response.headers["x-trace-id"]


async def test_a_refused_registration_publishes_nothing(
    api: UsersApi, client: httpx.AsyncClient, users_database: str
) -> None:
    await api.register("ada@example.com")

    duplicate = await client.post(
        "/api/users", json={"email": "ADA@example.com", "password": PASSWORD, "name": "Ada"}
    )

    assert duplicate.status_code == 409
    assert len(await _events(users_database)) == 1
