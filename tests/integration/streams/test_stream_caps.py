"""One user cannot take the notifications API away from everyone: streams are capped per user
across two gateway processes sharing Redis, they never draw from the pool of ordinary
requests, and the circuit to notifications stays closed. A gateway that dies holding leases
gives them back within their life."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, suppress

import httpx
import websockets.asyncio.client
from websockets.exceptions import ConnectionClosed

from meshdev.customers import Account, eventually
from meshdev.otlp import OtlpReceiver
from meshdev.processes import ServiceProcess
from meshdev.stack import RunningMesh

from .conftest import GATEWAYS, LEASE_SECONDS, STREAM_CAP

STREAM = "/api/notifications/stream"
USER_LIMIT = "stream_user_limit"  # the refusals' reason when a user holds the cap


@asynccontextmanager
async def _stream(
    http: httpx.AsyncClient, gateway: str, account: Account
) -> AsyncIterator[httpx.Response]:
    """A live event stream while the block runs (or the refusal, read whole)."""
    async with http.stream("GET", gateway + STREAM, headers=account.headers) as response:
        if response.status_code == 200:
            # Kept while the block runs: a reader dropped half-way closes the stream.
            lines = response.aiter_lines()
            first = await asyncio.wait_for(anext(lines), 10)
            assert first.startswith(":"), first  # subscribed: the stream is live
        else:
            await response.aread()
        yield response


async def _websocket_close(gateway: str, account: Account) -> int | None:
    url = (
        gateway.replace("http://", "ws://") + f"/api/notifications/ws?access_token={account.token}"
    )
    async with websockets.asyncio.client.connect(url, proxy=None) as socket:
        with suppress(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), timeout=10)
    return socket.close_code


def _last(otlp: OtlpReceiver, service: str, metric: str, **attributes: str) -> float | None:
    values = [
        p.value
        for p in otlp.points
        if p.service == service
        and p.metric == metric
        and all(p.attributes.get(k) == v for k, v in attributes.items())
    ]
    return values[-1] if values else None


async def test_one_user_cannot_take_the_notifications_api_from_everyone(
    services: RunningMesh, gateways: tuple[ServiceProcess, ...], otlp: OtlpReceiver
) -> None:
    attacker, other, third = [await Account.register(services.url("users")) for _ in range(3)]
    urls = [gateway.url for gateway in gateways]
    async with httpx.AsyncClient(timeout=15) as http, AsyncExitStack() as held:
        answers = []
        for n in range(STREAM_CAP + 4):  # through each gateway in turn, until refused
            answers.append(await held.enter_async_context(_stream(http, urls[n % 2], attacker)))
            if answers[-1].status_code != 200:
                break
        socket_closed_with = await _websocket_close(urls[1], attacker)
        listed = [
            await http.get(f"{url}/api/notifications", headers=other.headers)
            for url in urls
            for _ in range(6)  # more than the breaker's threshold (5) per gateway
        ]
        third_stream = await held.enter_async_context(_stream(http, urls[0], third))

        assert [r.status_code for r in answers] == [200] * STREAM_CAP + [429]
        refused = answers[-1]
        assert refused.headers["content-type"] == "application/problem+json"
        assert f"one user may hold {STREAM_CAP} event streams" in refused.json()["detail"]
        assert "retry-after" in refused.headers
        assert socket_closed_with == 1008
        assert [r.status_code for r in listed] == [200] * len(listed)
        assert third_stream.status_code == 200

        # The gateways say what they hold, and why they refused.
        await otlp.wait_for(
            lambda: (
                (
                    _last(otlp, GATEWAYS[0], "streams.open", **{"stream.kind": "sse"}),
                    _last(otlp, GATEWAYS[1], "streams.open", **{"stream.kind": "sse"}),
                )
                == (STREAM_CAP // 2 + 1, STREAM_CAP // 2)
            ),
            what="each gateway's open streams",
        )

    # Each gateway refused the user once (the stream, then the WebSocket); the counts arrive
    # with each process's next metric export.
    def refused_by_both() -> bool:
        return all(
            _last(otlp, name, "resource_limit.refusals", **{"resource_limit.reason": USER_LIMIT})
            for name in GATEWAYS
        )

    await otlp.wait_for(refused_by_both, what="each gateway's refusals")
    # The circuit to notifications never opened, and no gateway blamed the service.
    assert not [
        p
        for p in otlp.points
        if p.metric == "gateway.circuit_breaker.state"
        and p.attributes.get("state") == "open"
        and p.value
    ]
    for gateway in gateways:
        assert "did not accept a connection" not in gateway.logs()


async def test_a_killed_gateways_leases_expire_and_its_user_may_stream_again(
    services: RunningMesh,
    gateways: tuple[ServiceProcess, ...],
    gateway_process: Callable[[str], ServiceProcess],
) -> None:
    doomed = gateway_process("gateway-doomed").start()
    try:
        await asyncio.to_thread(doomed.wait_ready)
        user = await Account.register(services.url("users"))
        async with httpx.AsyncClient(timeout=15) as http:
            async with AsyncExitStack() as held:
                opened = [
                    await held.enter_async_context(_stream(http, doomed.url, user))
                    for _ in range(STREAM_CAP)
                ]
                async with _stream(http, gateways[0].url, user) as elsewhere:
                    assert elsewhere.status_code == 429  # the doomed one's leases count
                await asyncio.to_thread(doomed.kill)  # SIGKILL: nothing is given back

            assert [r.status_code for r in opened] == [200] * STREAM_CAP

            async def may_stream_again() -> bool:
                async with _stream(http, gateways[0].url, user) as again:
                    return again.status_code == 200

            # A failure bound: the leases stop counting within their life.
            await eventually(may_stream_again, within=3 * LEASE_SECONDS + 10, every=0.5)
    finally:
        await asyncio.to_thread(doomed.stop)
