"""The shared HTTP client reports connection failures precisely, so callers can pick 503 vs 504,
and traces every call."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags

from meshdev.processes import free_port
from meshdev.pytest_plugin import metric_points
from meshkit.http_client import ConnectRetryTransport, ServiceClient, create_http_client

TRACER = trace.get_tracer("tests")


@pytest.fixture
async def client() -> AsyncIterator[ServiceClient]:
    http = create_http_client(connect_timeout=0.5, read_timeout=0.5, connect_retries=0)
    async with http:
        yield http


async def test_a_refused_connection_is_a_connect_error(client: ServiceClient) -> None:
    with pytest.raises(httpx.ConnectError):
        await client.get(f"http://127.0.0.1:{free_port()}/")


async def test_a_server_closing_without_answer_is_a_protocol_error(
    client: ServiceClient,
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
    client: ServiceClient,
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
            await client.request(
                "POST", f"http://127.0.0.1:{port}/", content=_chunks(32 * 1024 * 1024)
            )
    finally:
        server.close()
        await server.wait_closed()


async def _chunks(size: int) -> AsyncIterator[bytes]:
    for _ in range(size // 65536):
        yield b"x" * 65536


async def test_a_silent_server_is_a_read_timeout(client: ServiceClient) -> None:
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


async def test_urls_are_sent_exactly_as_encoded(client: ServiceClient) -> None:
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


async def _request_headers(client: ServiceClient, status: int = 204) -> bytes:
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append((await reader.readuntil(b"\r\n\r\n")).lower())
        head = f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        writer.write(head.encode())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        await client.get(f"http://127.0.0.1:{port}/path?access_token=secret")
    finally:
        server.close()
        await server.wait_closed()
    return seen[0]


def _traceparent(headers: bytes) -> str:
    match = re.search(rb"^traceparent: (\S+)\r$", headers, re.MULTILINE)
    assert match is not None, headers
    return match.group(1).decode()


@pytest.mark.parametrize(("disabled", "traced"), [("false", True), ("true", False)])
async def test_clients_are_traced_unless_the_sdk_is_disabled(
    disabled: str, traced: bool, monkeypatch: pytest.MonkeyPatch, spans: InMemorySpanExporter
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", disabled)
    async with create_http_client(connect_retries=0) as client:
        with TRACER.start_as_current_span("request") as request:
            headers = await _request_headers(client)

    client_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert bool(client_spans) is traced
    # With the SDK disabled nothing is done, not even carrying the context on.
    assert (b"traceparent:" in headers) is traced
    if traced:
        trace_id, span_id = _traceparent(headers).split("-")[1:3]
        assert trace_id == format(request.get_span_context().trace_id, "032x")
        assert span_id == format(client_spans[0].context.span_id, "016x")


async def test_a_call_is_a_client_span_whose_id_the_callee_receives(
    spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    async with create_http_client(connect_retries=0) as client:
        with TRACER.start_as_current_span("request") as request:
            headers = await _request_headers(client)

    (call,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert call.name == "GET"
    assert call.parent is not None
    assert call.parent.span_id == request.get_span_context().span_id
    _, trace_id, parent_id, flags = _traceparent(headers).split("-")
    assert int(trace_id, 16) == call.context.trace_id
    assert int(parent_id, 16) == call.context.span_id
    assert int(flags, 16) & 0x01  # sampled
    attributes = dict(call.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 204
    assert "secret" not in str(attributes["url.full"])  # credentials in URLs are redacted
    port = attributes["server.port"]
    measured = [
        p
        for p in metric_points(metric_reader, "http.client.request.duration")
        if p.attributes.get("server.port") == port
    ]
    assert [p.count for p in measured] == [1]
    assert measured[0].attributes["http.response.status_code"] == 204


async def test_an_error_answer_or_a_failed_call_is_an_error_span(
    spans: InMemorySpanExporter,
) -> None:
    async with create_http_client(connect_retries=0) as client:
        with TRACER.start_as_current_span("request"):
            await _request_headers(client, status=503)
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{free_port()}/")

    answered, refused = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert answered.status.status_code is StatusCode.ERROR
    assert (answered.attributes or {})["error.type"] == "503"
    assert refused.status.status_code is StatusCode.ERROR
    assert (refused.attributes or {})["error.type"] == "ConnectError"


async def test_a_sampled_out_request_passes_its_decision_on_without_a_span(
    spans: InMemorySpanExporter,
) -> None:
    sampled_out = NonRecordingSpan(
        SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    )
    async with create_http_client(connect_retries=0) as client:
        with trace.use_span(sampled_out):
            headers = await _request_headers(client)

    assert _traceparent(headers) == f"00-{0xABC:032x}-{0xDEF:016x}-00"
    assert spans.get_finished_spans() == ()


async def test_no_cookie_an_answer_sets_goes_out_with_a_later_request(
    client: ServiceClient,
) -> None:
    """A gateway's client is shared by every user: a jar would pass one user's cookie on."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append((await reader.readuntil(b"\r\n\r\n")).lower())
        writer.write(
            b"HTTP/1.1 302 Found\r\nset-cookie: session=alice\r\nlocation: /elsewhere\r\n"
            b"content-length: 0\r\nconnection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        # A host name, as upstreams have in a cluster: cookie jars keep no cookies of IPs.
        first = await client.get(f"http://localhost:{port}/login")
        await client.get(f"http://localhost:{port}/next")
    finally:
        server.close()
        await server.wait_closed()

    assert first.status_code == 302  # answered as it is: redirects are the caller's business
    assert len(heads) == 2  # the redirect was not followed
    assert b"cookie:" not in heads[1]


async def test_a_full_pool_is_a_pool_timeout_not_a_connect_timeout() -> None:
    """A client's own saturation must not look like a server that does not accept
    connections: callers count the latter against the server (a gateway's breaker)."""
    release = asyncio.Event()

    async def held_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
        await writer.drain()
        await release.wait()
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(held_open, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    http = create_http_client(connect_timeout=0.2, max_connections=1, connect_retries=0)
    try:
        held = await http.send(http.build_request("GET", url))

        with pytest.raises(httpx.PoolTimeout):
            await http.get(url)

        release.set()
        await held.aread()
        await held.aclose()
        # The slot is back once the answer was read and closed.
        assert (await http.get(url)).status_code == 200
    finally:
        release.set()
        await http.aclose()
        server.close()
        await server.wait_closed()


class _Refusing(httpx.AsyncBaseTransport):
    """Refuses the first `refusals` connections, then answers 200."""

    def __init__(self, refusals: int, error: type[httpx.TransportError] = httpx.ConnectError):
        self.refusals = refusals
        self.error = error
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.refusals:
            raise self.error("refused", request=request)
        return httpx.Response(200, request=request)


async def test_a_refused_connection_is_tried_again() -> None:
    inner = _Refusing(1)

    response = await ConnectRetryTransport(inner, retries=1).handle_async_request(
        httpx.Request("GET", "http://users/")
    )

    assert response.status_code == 200
    assert inner.calls == 2


async def test_a_connection_refused_after_every_retry_is_a_connect_error() -> None:
    inner = _Refusing(5)

    with pytest.raises(httpx.ConnectError):
        await ConnectRetryTransport(inner, retries=2).handle_async_request(
            httpx.Request("GET", "http://users/")
        )
    assert inner.calls == 3


async def test_a_request_that_may_have_reached_the_server_is_not_tried_again() -> None:
    inner = _Refusing(1, error=httpx.ReadTimeout)

    with pytest.raises(httpx.ReadTimeout):
        await ConnectRetryTransport(inner, retries=2).handle_async_request(
            httpx.Request("GET", "http://users/")
        )
    assert inner.calls == 1
