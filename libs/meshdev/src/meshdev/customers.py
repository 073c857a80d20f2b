"""A customer of the running mesh (registered, with a token), so tests read as behaviour."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from meshdev.api import UsersApi
from meshdev.stack import RunningMesh

T = TypeVar("T")

ORDER = {"items": [{"sku": "book-1", "quantity": 2, "unit_price_cents": 1250}]}


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, timeout: float = 20.0, every: float = 0.1
) -> T:
    """Polls until `probe` returns something truthy; fails with the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


class Customer:
    """A registered user with a token, talking to the services directly."""

    def __init__(
        self, mesh: RunningMesh, http: httpx.AsyncClient, user: dict[str, str], token: str
    ):
        self.mesh = mesh
        self.http = http
        self.user = user
        self.id = user["id"]
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    async def register(cls, mesh: RunningMesh, http: httpx.AsyncClient) -> Customer:
        users = UsersApi(httpx.AsyncClient(base_url=mesh.url("users"), timeout=10))
        async with users.client:
            email = f"user-{secrets.token_hex(6)}@example.com"
            user = await users.register(email)
            response = await users.login(email)
            assert response.status_code == 200, response.text
            return cls(mesh, http, user, response.json()["access_token"])

    async def place_order(
        self, body: dict[str, Any] | None = None, *, key: str | None = None
    ) -> httpx.Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.http.post(
            f"{self.mesh.url('orders')}/api/orders", json=body or ORDER, headers=headers
        )

    async def notifications(self) -> list[dict[str, Any]]:
        response = await self.http.get(
            f"{self.mesh.url('notifications')}/api/notifications?limit=100", headers=self.headers
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def notifications_of(self, event_type: str, count: int) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            found = [n for n in await self.notifications() if n["type"] == event_type]
            return found if len(found) >= count else None

        return await eventually(probe)
