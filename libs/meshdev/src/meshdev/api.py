"""Clients of the mesh's public API, so tests read as behaviour (in-process or over TCP)."""

from __future__ import annotations

import asyncio
import time

import httpx

PASSWORD = "correct horse battery"


class UsersApi:
    """Small helpers over the users API, so tests read as behaviour."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def register(
        self, email: str = "ada@example.com", password: str = PASSWORD
    ) -> dict[str, str]:
        response = await self.client.post(
            "/api/users", json={"email": email, "password": password, "name": "Ada"}
        )
        assert response.status_code == 201, response.text
        body: dict[str, str] = response.json()
        return body

    async def login(
        self, email: str = "ada@example.com", password: str = PASSWORD
    ) -> httpx.Response:
        return await self.client.post(
            "/api/auth/token", data={"username": email, "password": password}
        )

    async def token(self, email: str = "ada@example.com") -> str:
        await self.register(email)
        response = await self.login(email)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


class MeshApi(UsersApi):
    """The whole public API through the gateway, for tests and load generators."""

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def create_order(
        self,
        token: str,
        items: list[dict[str, object]] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers = self.bearer(token)
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        body = {"items": items or [{"sku": "book-1", "quantity": 2, "unit_price_cents": 1250}]}
        return await self.client.post("/api/orders", json=body, headers=headers)

    async def list_orders(
        self, token: str, *, limit: int | None = None, cursor: str | None = None
    ) -> httpx.Response:
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if cursor is not None:
            params["cursor"] = cursor
        return await self.client.get("/api/orders", params=params, headers=self.bearer(token))

    async def notifications(self, token: str) -> list[dict[str, object]]:
        response = await self.client.get(
            "/api/notifications", params={"limit": 100}, headers=self.bearer(token)
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, object]] = response.json()["items"]
        return items

    async def wait_for_notifications(
        self,
        token: str,
        *,
        count: int,
        event_type: str | None = None,
        within: float = 10.0,
    ) -> list[dict[str, object]]:
        """Polls until `count` notifications (of `event_type`) exist, or `within` runs out."""
        deadline = time.monotonic() + within
        while True:
            found = [
                n
                for n in await self.notifications(token)
                if event_type is None or n["type"] == event_type
            ]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            await asyncio.sleep(0.1)
