"""A customer of the running mesh (registered, with a token), so tests read as behaviour."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

import httpx
import websockets.asyncio.client

from meshdev.api import UsersApi
from meshdev.stack import MeshTarget

T = TypeVar("T")

ORDER = {"items": [{"sku": "book-1", "quantity": 2, "unit_price_cents": 1250}]}


async def eventually(
    probe: Callable[[], Awaitable[T | None]], *, within: float = 20.0, every: float = 0.1
) -> T:
    """Polls until `probe` returns something truthy; fails with the last value otherwise."""
    deadline = time.monotonic() + within
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"condition not met within {within}s; last value: {last!r}")


class Customer:
    """A registered user with a token, talking to the mesh through the gateway when it runs
    (every public path is served there unchanged), else to the services directly."""

    def __init__(
        self,
        mesh: MeshTarget,
        http: httpx.AsyncClient,
        user: dict[str, str],
        token: str,
    ):
        self.mesh = mesh
        self.http = http
        self.user = user
        self.id = user["id"]
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    async def register(cls, mesh: MeshTarget, http: httpx.AsyncClient) -> Customer:
        account = await Account.register(mesh.public_url("users"))
        return cls(mesh, http, account.user, account.token)

    def url(self, service: str, path: str) -> str:
        """`path` of `service` as this customer reaches it."""
        return self.mesh.public_url(service) + path

    async def place_order(
        self, body: dict[str, Any] | None = None, *, key: str | None = None
    ) -> httpx.Response:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.http.post(
            self.url("orders", "/api/orders"), json=body or ORDER, headers=headers
        )

    async def cancel_order(self, order_id: str) -> httpx.Response:
        return await self.http.post(
            self.url("orders", f"/api/orders/{order_id}/cancel"), headers=self.headers
        )

    async def orders_page(self, *, limit: int = 20, cursor: str | None = None) -> httpx.Response:
        params: dict[str, str | int] = {"limit": limit}
        if cursor is not None:
            params["cursor"] = cursor
        return await self.http.get(
            self.url("orders", "/api/orders"), params=params, headers=self.headers
        )

    async def notifications(self) -> list[dict[str, Any]]:
        response = await self.http.get(
            self.url("notifications", "/api/notifications?limit=100"), headers=self.headers
        )
        assert response.status_code == 200, response.text
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def notifications_of(
        self, event_type: str, count: int, *, within: float = 20.0
    ) -> list[dict[str, Any]]:
        async def probe() -> list[dict[str, Any]] | None:
            found = [n for n in await self.notifications() if n["type"] == event_type]
            return found if len(found) >= count else None

        return await eventually(probe, within=within)

    def sse(self) -> AbstractAsyncContextManager[LiveStream]:
        url = self.url("notifications", "/api/notifications/stream")
        return sse_stream(self.http, url, self.headers)

    def websocket_url(self) -> str:
        base = self.url("notifications", "/api/notifications/ws").replace("http://", "ws://", 1)
        return f"{base}?access_token={self.token}"

    def websocket(self) -> AbstractAsyncContextManager[LiveStream]:
        return websocket_stream(self.websocket_url())


class LiveStream:
    """Notifications pushed to one SSE stream or WebSocket, in arrival order."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.ended = asyncio.Event()  # the server ended the stream
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def push(self, notification: dict[str, Any]) -> None:
        self.received.append(notification)
        self._queue.put_nowait(notification)

    async def next(self, *, within: float) -> dict[str, Any]:
        return await asyncio.wait_for(self._queue.get(), within)


@asynccontextmanager
async def sse_stream(
    http: httpx.AsyncClient, url: str, headers: dict[str, str]
) -> AsyncIterator[LiveStream]:
    """Reads `event: notification` blocks of an SSE stream in the background."""
    stream = LiveStream()
    async with http.stream("GET", url, headers=headers, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert (await anext(lines)).startswith(":")  # subscribed: the stream is live

        async def read() -> None:
            fields: dict[str, str] = {}
            async for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    fields[name] = value.removeprefix(" ")
                    continue
                if fields.get("event") == "notification":
                    notification = json.loads(fields["data"])
                    assert fields["id"] == notification["id"]
                    stream.push(notification)
                fields = {}
            stream.ended.set()

        reader = asyncio.create_task(read())
        try:
            yield stream
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


@asynccontextmanager
async def websocket_stream(url: str) -> AsyncIterator[LiveStream]:
    stream = LiveStream()
    async with websockets.asyncio.client.connect(url) as socket:

        async def read() -> None:
            async for frame in socket:
                stream.push(json.loads(frame))
            stream.ended.set()

        reader = asyncio.create_task(read())
        try:
            yield stream
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


class Account:
    """A registered user of a users service and the headers that authenticate as them."""

    def __init__(self, user: dict[str, str], token: str) -> None:
        self.user = user
        self.id = user["id"]
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"}

    @classmethod
    async def register(cls, users_url: str) -> Account:
        async with httpx.AsyncClient(base_url=users_url, timeout=10) as http:
            users = UsersApi(http)
            email = f"user-{secrets.token_hex(6)}@example.com"
            user = await users.register(email)
            response = await users.login(email)
            assert response.status_code == 200, response.text
            return cls(user, response.json()["access_token"])
