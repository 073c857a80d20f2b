"""Bodies flow through chunk by chunk: big responses, size limits, event streams, WebSockets."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from meshdev.processes import free_port

MIB = 1024 * 1024


async def test_a_large_response_streams_without_being_buffered(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """64 MiB pass through while the gateway (in this process) never holds more than a few."""
    received = 0
    tracemalloc.start()
    try:
        async with client.stream("GET", "/api/orders/big?mib=64", headers=auth) as response:
            assert response.status_code == 200
            async for chunk in response.aiter_raw():
                received += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert received == 64 * MIB
    assert peak < 8 * MIB


async def test_a_declared_body_over_the_limit_is_413_without_an_upstream_call(
    client: httpx.AsyncClient, auth: dict[str, str], fresh_hits: list[str]
) -> None:
    response = await client.post("/api/orders/echo", headers=auth, content=b"x" * (300 * 1024))

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert fresh_hits == []


async def test_a_client_still_uploading_a_declared_oversized_body_reads_the_413(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """Several MiB are more than the sockets buffer: answering before the upload ends and
    closing would reset the connection under the client (it would never see the 413)."""
    for _ in range(3):
        response = await client.post("/api/orders/echo", headers=auth, content=b"x" * (6 * MIB))

        assert response.status_code == 413


async def test_a_streamed_body_is_cut_off_at_the_limit_with_413(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):  # 40 x 16 KiB, no Content-Length: only counting can catch it
            yield b"x" * 16_384

    response = await client.post("/api/orders/echo", headers=auth, content=chunks())

    assert response.status_code == 413
    assert response.json()["status"] == 413


async def test_a_streamed_body_under_the_limit_arrives_whole(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"x" * 16_384

    response = await client.post("/api/orders/echo", headers=auth, content=chunks())

    assert response.status_code == 200
    assert response.json()["body_size"] == 8 * 16_384


async def test_server_sent_events_arrive_one_by_one(
    client: httpx.AsyncClient, auth: dict[str, str], next_event: asyncio.Event
) -> None:
    """Each event is read through the gateway before the upstream produces the next one."""
    async with client.stream(
        "GET", "/api/notifications/stream", headers={**auth, "Accept": "text/event-stream"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        seen: list[str] = []
        for number in (1, 2, 3):
            if number > 1:
                next_event.set()
            event = await asyncio.wait_for(_next_event(lines), timeout=10)
            seen.append(event)

    assert seen == ['{"n": 1}', '{"n": 2}', '{"n": 3}']


async def test_a_started_event_stream_may_idle_longer_than_the_answer_timeout(
    client: httpx.AsyncClient, auth: dict[str, str], next_event: asyncio.Event
) -> None:
    """The test gateway's read timeout is 1 s: waiting for an answer, not between events."""
    async with client.stream("GET", "/api/notifications/stream", headers=auth) as response:
        lines = response.aiter_lines()
        first = await asyncio.wait_for(_next_event(lines), timeout=10)
        await asyncio.sleep(1.5)  # upstream idle for longer than UPSTREAM_READ_TIMEOUT
        next_event.set()
        second = await asyncio.wait_for(_next_event(lines), timeout=10)

    assert (first, second) == ('{"n": 1}', '{"n": 2}')


async def _next_event(lines: AsyncIterator[str]) -> str:
    async for line in lines:
        if line.startswith("data: "):
            return line.removeprefix("data: ")
    raise AssertionError("the stream ended")


def _ws_url(gateway_url: str, token: str) -> str:
    return gateway_url.replace("http://", "ws://") + f"/api/notifications/ws?access_token={token}"


async def test_websocket_frames_pass_both_ways(gateway_url: str, token: str) -> None:
    async with connect(_ws_url(gateway_url, token), proxy=None) as socket:
        await socket.send("hello")
        assert await asyncio.wait_for(socket.recv(), timeout=10) == "hello"
        await socket.send("ünïcode ✓")
        assert await asyncio.wait_for(socket.recv(), timeout=10) == "ünïcode ✓"


async def test_the_upstream_close_code_reaches_the_client(gateway_url: str, token: str) -> None:
    async with connect(_ws_url(gateway_url, token), proxy=None) as socket:
        await socket.send("close:4001")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), timeout=10)

    assert socket.close_code == 4001
    assert socket.close_reason == "asked to"


@pytest.mark.parametrize("token", ["", "not-a-token"])
async def test_a_websocket_with_a_bad_token_is_closed_with_1008(
    gateway_url: str, token: str, fresh_hits: list[str]
) -> None:
    async with connect(_ws_url(gateway_url, token), proxy=None) as socket:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), timeout=10)

    assert socket.close_code == 1008
    assert fresh_hits == []


async def test_a_websocket_to_an_unreachable_upstream_is_closed_with_1013(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]], token: str
) -> None:
    async with (
        start_gateway(notifications_url=f"http://127.0.0.1:{free_port()}") as url,
        connect(_ws_url(url, token), proxy=None) as socket,
    ):
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), timeout=10)

    assert socket.close_code == 1013


async def test_an_event_stream_upstream_is_released_when_the_client_leaves(
    client: httpx.AsyncClient, auth: dict[str, str], open_streams: Callable[[], int]
) -> None:
    async with client.stream(
        "GET", "/api/notifications/stream", headers={**auth, "Accept": "text/event-stream"}
    ) as response:
        await asyncio.wait_for(_next_event(response.aiter_lines()), timeout=10)
        assert open_streams() == 1

    # Nothing more is sent upstream-side, so only the gateway noticing the client can end it.
    for _ in range(200):
        if not open_streams():
            break
        await asyncio.sleep(0.05)
    assert open_streams() == 0


async def test_an_upstream_dying_mid_response_cuts_the_response_short(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    """The client must see a broken response, never a complete-looking truncated one."""
    async with client.stream("GET", "/api/orders/broken", headers=auth) as response:
        assert response.status_code == 200
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()


async def test_the_client_close_code_reaches_the_upstream(
    gateway_url: str, token: str, client_close_codes: list[int]
) -> None:
    client_close_codes.clear()
    async with connect(_ws_url(gateway_url, token), proxy=None) as socket:
        await socket.send("hello")
        await asyncio.wait_for(socket.recv(), timeout=10)
        await socket.close(code=4002, reason="client leaves")

    for _ in range(200):
        if client_close_codes:
            break
        await asyncio.sleep(0.05)
    assert client_close_codes == [4002]
