"""The shared HTTP client reports connection failures precisely, so callers can pick 503 vs 504."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meshdev.processes import free_port
from meshkit.http_client import create_http_client


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    http = create_http_client(connect_timeout=0.5, read_timeout=0.5, connect_retries=0)
    async with http:
        yield http


async def test_a_refused_connection_is_a_connect_error(client: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_a_server_closing_without_answer_is_a_protocol_error(
    client: httpx.AsyncClient,
) -> None:
    async def close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(close_at_once, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_a_server_dropping_the_connection_while_the_body_is_sent_is_a_write_error(
    client: httpx.AsyncClient,
) -> None:
    """What a gateway meets when an upstream stops: the request never fully arrived (so no
    timeout, and not an answer gone wrong)."""

    async def drop_during_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()

    server = await asyncio.start_server(drop_during_body, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.WriteError):
            await client.post(f"http://127.0.0.1:{port}/", content=_chunks(32 * 1024 * 1024))
    finally:
        server.close()
        await server.wait_closed()


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 65536):
        yield b"x" * 65536


async def test_a_silent_server_is_a_read_timeout(client: httpx.AsyncClient) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()


async def test_urls_are_sent_exactly_as_encoded(client: httpx.AsyncClient) -> None:
    """Opaque cursors survive: `%2F` and `%2B` are not decoded on the way out."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await client.get(f"http://127.0.0.1:{port}/a%2Fb?cursor=x%2By%2Fz%3D&q=%41")
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [b"GET /a%2Fb?cursor=x%2By%2Fz%3D&q=%41 HTTP/1.1"]


async def _request_headers(client: httpx.AsyncClient) -> bytes:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).lower())
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await client.get(f"http://127.0.0.1:{port}/")
    finally:
        server.close()
        await server.wait_closed()
    return seen[0]


@pytest.mark.parametrize(("disabled", "traced"), [("false", True), ("true", False)])
async def test_clients_are_traced_unless_the_sdk_is_disabled(
    disabled: str, traced: bool, monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", disabled)
    async with create_http_client(connect_retries=0) as client:
        headers = await _request_headers(client)

    assert (b"traceparent:" in headers) is traced
    assert bool(spans.get_finished_spans()) is traced
