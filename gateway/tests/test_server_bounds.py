"""What one client can hold of the gateway's server, each bound reached through a gateway under
its production command (gunicorn, meshkit's bounded uvicorn worker) with small bounds, and
answered with its documented error."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from meshdev.customers import eventually
from meshdev.processes import ServiceProcess

BOUNDS = {
    "LIMIT_REQUEST_LINE": "512",
    "LIMIT_REQUEST_FIELDS": "20",
    "LIMIT_REQUEST_FIELD_SIZE": "1024",
    "LIMIT_REQUEST_HEAD_SIZE": "4096",
    "REQUEST_HEADER_TIMEOUT": "1",
    "REQUEST_BODY_TIMEOUT": "1",
    "KEEPALIVE": "1",
    "MAX_CONNECTIONS_PER_ADDRESS": "4",
    "WS_MAX_MESSAGE_SIZE": "1024",
}
WAIT = 10  # seconds: a failure bound for answers that come after a timeout of 1 s


@pytest.fixture(scope="module")
async def bounded_gateway(users_url: str, stand_in_url: str, artifacts: Path) -> AsyncIterator[str]:
    process = ServiceProcess(
        "mesh_gateway",
        env={
            "ENVIRONMENT": "test",
            "USERS_URL": users_url,
            "ORDERS_URL": stand_in_url,
            "NOTIFICATIONS_URL": stand_in_url,
            "RATE_LIMIT_ENABLED": "false",
            # Loopback clients are not a trusted proxy here, so they are counted per address.
            "FORWARDED_ALLOW_IPS": "192.0.2.1",
            "OTEL_SERVICE_NAME": "gateway",
            "OTEL_SDK_DISABLED": "true",
            **BOUNDS,
        },
        log_path=artifacts / "gateway-bounds.log",
    )
    try:
        process.start()
        await asyncio.to_thread(process.wait_ready)
        yield process.url
    finally:
        await asyncio.to_thread(process.stop)


async def _exchange(url: str, *parts: bytes, pause_after: int | None = None) -> bytes:
    """Sends `parts` on a fresh connection (stopping after part `pause_after` as a stalled
    client would) and reads until the server closes it."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for n, part in enumerate(parts):
            if pause_after is not None and n > pause_after:
                break
            writer.write(part)
            await writer.drain()
        return await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()


def _problem(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


def _request(path: str, *headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", "Host: gateway", *headers, "", ""]
    return "\r\n".join(lines).encode()


async def test_a_request_target_over_the_limit_is_414(bounded_gateway: str) -> None:
    status, headers, problem = _problem(
        await _exchange(bounded_gateway, _request("/api/orders/echo?q=" + "x" * 600))
    )

    assert status == 414
    assert headers["content-type"] == "application/problem+json"
    assert headers["connection"] == "close"
    assert headers["x-request-id"]
    assert len(headers["x-trace-id"]) == 32
    assert problem["detail"] == "The request target is longer than 512 bytes."
    assert problem["trace_id"] == headers["x-trace-id"]


async def test_more_headers_than_the_limit_is_431(bounded_gateway: str) -> None:
    many = [f"X-Filler-{n}: {n}" for n in range(25)]
    status, _, problem = _problem(
        await _exchange(bounded_gateway, _request("/api/orders/echo", *many))
    )

    assert (status, problem["detail"]) == (431, "The request has more than 20 headers.")


async def test_a_header_over_the_size_limit_is_431(bounded_gateway: str) -> None:
    status, _, problem = _problem(
        await _exchange(bounded_gateway, _request("/api/orders/echo", "X-Big: " + "x" * 2000))
    )

    assert (status, problem["detail"]) == (431, "A request header is larger than 1024 bytes.")


@pytest.mark.parametrize("split", [False, True], ids=["in-one-write", "in-many-writes"])
async def test_headers_over_the_total_limit_are_431(bounded_gateway: str, split: bool) -> None:
    request = _request("/api/orders/echo", *(f"X-Part-{n}: {'x' * 900}" for n in range(6)))
    parts = [request[i : i + 700] for i in range(0, len(request), 700)] if split else [request]

    status, _, problem = _problem(await _exchange(bounded_gateway, *parts))

    assert (status, problem["detail"]) == (431, "The request's headers exceed 4096 bytes in all.")


async def test_headers_that_stall_are_408(bounded_gateway: str) -> None:
    """Slowloris: the start of a request, then nothing."""
    status, _, problem = _problem(
        await _exchange(bounded_gateway, b"GET /api/orders/echo HTTP/1.1\r\nHost: x\r\n")
    )

    assert (status, problem["detail"]) == (
        408,
        "The request's headers did not arrive within 1 seconds.",
    )


async def test_a_connection_that_sends_nothing_is_408(bounded_gateway: str) -> None:
    status, _, _ = _problem(await _exchange(bounded_gateway))

    assert status == 408


async def test_a_body_that_stalls_is_408(bounded_gateway: str, token: str) -> None:
    head = (
        "POST /api/orders/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: 100\r\n\r\n"
    ).encode()

    status, headers, problem = _problem(await _exchange(bounded_gateway, head, b'{"a": "'))

    assert status == 408
    assert headers["content-type"] == "application/problem+json"
    assert problem["detail"] == "The request body did not arrive within 1 seconds."


async def test_an_idle_kept_alive_connection_is_closed(bounded_gateway: str) -> None:
    """gunicorn's `keepalive` (KEEPALIVE), which uvicorn's worker passes on."""
    answer = await _exchange(bounded_gateway, _request("/healthz"))

    # One answer, then the server closed the connection (read() returned at its end).
    assert answer.startswith(b"HTTP/1.1 200 ")
    assert answer.count(b"HTTP/1.1 ") == 1


async def test_connections_from_one_address_over_the_limit_are_429(
    bounded_gateway: str, token: str
) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    async with AsyncExitStack() as streams:
        clients = [
            await streams.enter_async_context(
                httpx.AsyncClient(base_url=bounded_gateway, timeout=WAIT)
            )
            for _ in range(4)
        ]
        for client in clients:  # four long-lived connections of one address
            response = await streams.enter_async_context(
                client.stream("GET", "/api/notifications/stream", headers=auth)
            )
            assert response.status_code == 200
        status, headers, problem = _problem(await _exchange(bounded_gateway, _request("/healthz")))

    assert status == 429
    assert headers["retry-after"] == "1"
    assert problem["detail"] == "Too many connections from your address: at most 4 at once."

    async def served_again() -> bool:
        async with httpx.AsyncClient(timeout=WAIT) as http:
            return (await http.get(f"{bounded_gateway}/healthz")).status_code == 200

    await eventually(served_again, within=WAIT)


async def test_a_websocket_message_over_the_size_limit_closes_it_with_1009(
    bounded_gateway: str, token: str
) -> None:
    url = (
        bounded_gateway.replace("http://", "ws://") + f"/api/notifications/ws?access_token={token}"
    )
    async with connect(url, proxy=None, max_size=None) as socket:
        await socket.send("small")
        assert await asyncio.wait_for(socket.recv(), WAIT) == "small"
        await socket.send("x" * 2000)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(socket.recv(), WAIT)

    assert socket.close_code == 1009


async def test_a_request_that_is_not_http_is_a_400_problem(bounded_gateway: str) -> None:
    """uvicorn's own answer is plain text; every error of the mesh is a problem."""
    status, headers, problem = _problem(
        await _exchange(bounded_gateway, b"NOT HTTP AT ALL\r\n\r\n")
    )

    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert problem["detail"] == "The request is not valid HTTP/1.1."
