"""The request-context middleware on WebSocket sessions: ids, the server span, closes."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from meshkit.middleware import RequestContextMiddleware


async def test_a_websocket_accept_without_headers_gets_the_request_ids() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})  # `headers` is optional in ASGI

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/ws", "headers": [(b"x-request-id", b"abc")]}
    await RequestContextMiddleware(app)(scope, receive, send)

    headers = dict(sent[0]["headers"])
    assert headers[b"x-request-id"] == b"abc"
    assert len(headers[b"x-trace-id"]) == 32


async def test_a_websocket_session_is_a_server_span(spans: InMemorySpanExporter) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "websocket", "path": "/ws", "query_string": b"access_token=abc", "headers": []}
    await RequestContextMiddleware(app).serve(scope, receive, send, route="/ws")

    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == ("WS /ws", SpanKind.SERVER)
    attributes = dict(span.attributes or {})
    assert attributes["network.protocol.name"] == "websocket"
    assert attributes["url.query"] == "access_token=[REDACTED]"
    assert "http.request.method" not in attributes


@pytest.mark.parametrize(("code", "failed"), [(1000, False), (1001, False), (1011, True)])
async def test_only_an_abnormal_websocket_close_is_an_error(
    code: int, failed: bool, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "websocket.accept"})
        raise WebSocketDisconnect(code)

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "websocket", "path": "/ws", "headers": []}
    with caplog.at_level(logging.ERROR), pytest.raises(WebSocketDisconnect):
        await RequestContextMiddleware(app)(scope, receive, send)

    (span,) = spans.get_finished_spans()
    assert (span.status.status_code is StatusCode.ERROR) is failed
    assert ("error.type" in (span.attributes or {})) is failed
    assert bool([r for r in caplog.records if r.name == "meshkit.errors"]) is failed
