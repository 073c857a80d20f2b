"""Long-lived streams are capped per user (across gateways sharing Redis) and per process, draw
from a pool of their own, and the gateway's own saturation never counts against an upstream."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mesh_gateway.settings import GatewaySettings
from mesh_gateway.streams import UserStreamLeases
from meshdev.api import UsersApi
from meshdev.customers import eventually
from meshdev.faults import TcpProxy
from meshkit.ratelimit import redis_client

from .conftest import UpstreamControl

GatewayFactory = Callable[..., AbstractAsyncContextManager[str]]
STREAM = "/api/notifications/stream"


async def _new_token(gateway_url: str) -> str:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as http:
        return await UsersApi(http).token(f"gw-{uuid.uuid4().hex[:8]}@example.com")


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def _open_stream(
    http: httpx.AsyncClient, url: str, token: str
) -> AsyncIterator[httpx.Response]:
    """An event stream of the stand-in through the gateway, open while the block runs (or the
    gateway's refusal, read whole)."""
    async with http.stream("GET", url + STREAM, headers=_bearer(token)) as response:
        if response.status_code == 200:
            lines = response.aiter_lines()
            assert (await asyncio.wait_for(anext(lines), 10)).startswith("event:")
        else:
            await response.aread()
        yield response


async def _streams_until_refused(
    stack: AsyncExitStack, http: httpx.AsyncClient, urls: list[str], token: str, most: int
) -> list[httpx.Response]:
    """Opens streams of one user, to each gateway in turn, until one is refused."""
    answers = []
    for n in range(most):
        response = await stack.enter_async_context(_open_stream(http, urls[n % len(urls)], token))
        answers.append(response)
        if response.status_code != 200:
            break
    return answers


async def _close_code(url: str) -> tuple[int | None, str | None]:
    async with connect(url, proxy=None) as socket:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), timeout=10)
    return socket.close_code, socket.close_reason


def _holding(control: UpstreamControl) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return control.held > 0

    return probe


async def _flood(socket: ClientConnection, count: int) -> None:
    """Sends `count` messages at once, then reads until the socket is closed."""
    for n in range(count):
        await socket.send(json.dumps({"n": n}))
    while True:
        await asyncio.wait_for(socket.recv(), timeout=10)


def _ws_url(gateway_url: str, token: str) -> str:
    return gateway_url.replace("http://", "ws://") + f"/api/notifications/ws?access_token={token}"


async def test_one_user_over_the_stream_cap_gets_429_and_others_keep_streaming(
    start_gateway: GatewayFactory, token: str
) -> None:
    async with (
        start_gateway(stream_limit_per_user=2) as url,
        httpx.AsyncClient(timeout=10.0) as http,
        AsyncExitStack() as streams,
    ):
        answers = await _streams_until_refused(streams, http, [url], token, most=5)
        over_ws = await _close_code(_ws_url(url, token))
        other = await streams.enter_async_context(_open_stream(http, url, await _new_token(url)))

        assert [r.status_code for r in answers] == [200, 200, 429]
        refused = answers[-1]
        assert refused.headers["content-type"] == "application/problem+json"
        assert "one user may hold 2 event streams and WebSockets" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "30"
        # SSE and WebSocket count together; the socket is told why.
        assert over_ws == (1008, "too many open streams (at most 2 per user)")
        assert other.status_code == 200


async def test_a_closed_stream_gives_its_place_back(
    start_gateway: GatewayFactory, token: str
) -> None:
    async with (
        start_gateway(stream_limit_per_user=1) as url,
        httpx.AsyncClient(timeout=10.0) as http,
    ):
        async with (
            _open_stream(http, url, token) as first,
            _open_stream(http, url, token) as second,
        ):
            assert (first.status_code, second.status_code) == (200, 429)

        async def opens() -> bool:
            # The gateway learns that the client left a moment after it did.
            async with _open_stream(http, url, token) as again:
                return again.status_code == 200

        await eventually(opens, within=10)


async def test_a_full_process_answers_new_streams_503_and_ordinary_requests_still_pass(
    start_gateway: GatewayFactory, token: str
) -> None:
    async with (
        start_gateway(stream_limit_per_process=2, stream_limit_per_user=0) as url,
        httpx.AsyncClient(timeout=10.0) as http,
        AsyncExitStack() as streams,
    ):
        answers = await _streams_until_refused(streams, http, [url], token, most=4)
        ws_code = await _close_code(_ws_url(url, await _new_token(url)))
        ordinary = await http.get(url + "/api/orders/echo", headers=_bearer(token))

        assert [r.status_code for r in answers] == [200, 200, 503]
        assert answers[-1].headers["retry-after"] == "5"
        assert "already holds 2 open streams" in answers[-1].json()["detail"]
        assert ws_code[0] == 1013
        assert ordinary.status_code == 200


async def test_streams_never_take_the_connections_of_ordinary_requests(
    start_gateway: GatewayFactory, token: str
) -> None:
    """One connection for ordinary requests per upstream, three streams open to the same
    upstream: the ordinary requests still get theirs."""
    async with (
        start_gateway(upstream_max_connections=1, stream_limit_per_user=0) as url,
        httpx.AsyncClient(timeout=10.0) as http,
        AsyncExitStack() as streams,
    ):
        opened = [
            await streams.enter_async_context(_open_stream(http, url, token)) for _ in range(3)
        ]
        listed = [await http.get(url + "/api/notifications", headers=_bearer(token))]

        assert [r.status_code for r in opened] == [200] * 3
        assert [r.status_code for r in listed] == [200]


async def test_a_full_pool_is_503_never_counted_against_the_upstream(
    start_gateway: GatewayFactory,
    token: str,
    upstream_control: UpstreamControl,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The gateway's own saturation: more refusals than the breaker's threshold (3 here), and
    the circuit stays closed; nothing says the service failed to accept a connection."""
    upstream_control.release_held.clear()
    async with (
        start_gateway(
            upstream_max_connections=1,
            upstream_connect_timeout=0.2,  # the pool's timeout too
            upstream_read_timeout=60,  # the held request outlasts the others
        ) as url,
        httpx.AsyncClient(base_url=url, timeout=10.0) as http,
    ):
        holding = asyncio.create_task(http.get("/api/orders/held", headers=_bearer(token)))
        try:
            await eventually(_holding(upstream_control), within=10, every=0.01)
            with caplog.at_level(logging.WARNING, logger="mesh_gateway.proxy"):
                refused = [
                    await http.get("/api/orders/echo", headers=_bearer(token)) for _ in range(5)
                ]
        finally:
            upstream_control.release_held.set()
        held = await holding
        after = await http.get("/api/orders/echo", headers=_bearer(token))

    assert [r.status_code for r in refused] == [503] * 5
    assert {r.json()["detail"] for r in refused} == {
        "Too many requests in flight to the orders service."
    }
    assert all(r.headers["retry-after"] == "1" for r in refused)
    assert held.status_code == 200
    assert after.status_code == 200  # the circuit never opened
    messages = [record.getMessage() for record in caplog.records]
    assert all("own pool of connections to it is full" in m for m in messages), messages
    assert not [m for m in messages if "did not accept a connection" in m]


async def test_an_event_stream_on_an_undeclared_path_is_capped_all_the_same(
    start_gateway: GatewayFactory, token: str
) -> None:
    async with (
        start_gateway(stream_limit_per_user=1) as url,
        httpx.AsyncClient(timeout=10.0) as http,
        _open_stream(http, url, token) as declared,
        http.stream("GET", url + "/api/orders/events", headers=_bearer(token)) as undeclared,
    ):
        await undeclared.aread()

        assert declared.status_code == 200
        assert undeclared.status_code == 429


async def test_gateways_sharing_redis_hold_one_cap_per_user(
    start_gateway: GatewayFactory, token: str, redis_url: str
) -> None:
    settings = {"stream_limit_per_user": 3, "rate_limit_storage_uri": redis_url}
    async with (
        start_gateway(**settings) as first,
        start_gateway(**settings) as second,
        httpx.AsyncClient(timeout=10.0) as http,
        AsyncExitStack() as streams,
    ):
        answers = await _streams_until_refused(streams, http, [first, second], token, most=6)
        ws_second = await _close_code(_ws_url(second, token))

    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert ws_second[0] == 1008


async def test_without_redis_streams_are_capped_per_process_and_answered_promptly(
    start_gateway: GatewayFactory, redis_url: str
) -> None:
    target = urlsplit(redis_url)
    link = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    try:
        async with (
            start_gateway(
                stream_limit_per_user=2, rate_limit_storage_uri=f"redis://127.0.0.1:{link.port}"
            ) as url,
            # The gateway's answer timeout (1 s here) bounds what a client may wait.
            httpx.AsyncClient(timeout=1.0) as http,
            AsyncExitStack() as streams,
        ):
            user = await _new_token(url)
            await link.blackhole()
            answers = await _streams_until_refused(streams, http, [url], user, most=4)
    finally:
        await link.close()

    assert [r.status_code for r in answers] == [200, 200, 429]


async def test_a_websocket_client_sending_too_fast_is_closed_with_1008(
    start_gateway: GatewayFactory, token: str
) -> None:
    async with (
        start_gateway(websocket_messages_per_second=3) as url,
        connect(_ws_url(url, token), proxy=None) as socket,
    ):
        with pytest.raises(ConnectionClosed):
            await _flood(socket, 500)

    assert socket.close_code == 1008
    assert socket.close_reason == "more than 3 messages per second"


async def test_a_renewal_writes_back_the_lease_of_an_open_stream_that_redis_lost(
    redis_url: str,
) -> None:
    """A Redis restarted without its data (or an outage longer than a lease) loses leases of
    streams that are still open; the next renewal counts them again, and a closed stream's
    lease is not brought back."""
    leases = UserStreamLeases(
        GatewaySettings(
            stream_limit_per_user=2,
            stream_lease_seconds=30,
            rate_limit_storage_uri=redis_url,
            rate_limit_key_prefix="t",
        )
    )
    redis = redis_client(redis_url, timeout=1.0)
    user = f"user-{uuid.uuid4().hex[:8]}"
    try:
        open_lease = await leases.acquire(user)
        closed_lease = await leases.acquire(user)
        assert open_lease is not None
        assert closed_lease is not None
        await redis.delete([leases.key(user)])
        await leases.release(closed_lease)

        await leases.renew()

        assert await redis.zrange(leases.key(user), 0, -1) == (open_lease.id,)
    finally:
        await redis.delete([leases.key(user)])
        redis.connection_pool.disconnect()
        leases.close()
