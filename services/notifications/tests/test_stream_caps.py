"""The service's own cap on one user's streams in a process (the gateway holds the same cap
across replicas; this one holds when the service is reached some other way)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from meshdev.customers import Account, eventually
from meshdev.servers import serve
from notifications_service.main import create_app
from notifications_service.settings import NotificationsSettings

CAP = 2


@pytest.fixture
async def url(settings: NotificationsSettings) -> AsyncIterator[str]:
    async with serve(create_app(settings.model_copy(update={"stream_limit_per_user": CAP}))) as url:
        yield url


@asynccontextmanager
async def _stream(
    http: httpx.AsyncClient, url: str, account: Account
) -> AsyncIterator[httpx.Response]:
    async with http.stream(
        "GET", f"{url}/api/notifications/stream", headers=account.headers
    ) as response:
        if response.status_code == 200:
            lines = response.aiter_lines()  # kept: a reader dropped half-way closes the stream
            assert (await asyncio.wait_for(anext(lines), 10)).startswith(":")
        else:
            await response.aread()
        yield response


async def test_a_user_over_the_cap_gets_429_and_a_closed_websocket(
    url: str, alice: Account, bob: Account
) -> None:
    async with httpx.AsyncClient(timeout=10) as http, AsyncExitStack() as held:
        answers = [
            await held.enter_async_context(_stream(http, url, alice)) for _ in range(CAP + 1)
        ]
        ws_url = (
            url.replace("http://", "ws://") + f"/api/notifications/ws?access_token={alice.token}"
        )
        async with connect(ws_url, proxy=None) as socket:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(socket.recv(), 10)
        others = await held.enter_async_context(_stream(http, url, bob))

    assert [r.status_code for r in answers] == [200] * CAP + [429]
    refused = answers[-1]
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "30"
    assert f"one user may hold {CAP} event streams" in refused.json()["detail"]
    assert (socket.close_code, socket.close_reason) == (
        1008,
        f"too many open streams (at most {CAP} per user)",
    )
    assert others.status_code == 200


async def test_a_closed_stream_gives_its_place_back(url: str, alice: Account) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        async with AsyncExitStack() as held:
            for _ in range(CAP):
                await held.enter_async_context(_stream(http, url, alice))

        async def opens() -> bool:
            async with _stream(http, url, alice) as again:
                return again.status_code == 200

        await eventually(opens, within=10)
