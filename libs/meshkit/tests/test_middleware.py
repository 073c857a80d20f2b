"""The request context: ids and the server span of WebSocket sessions, closes, and crashes."""

from __future__ import annotations

import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from meshkit.instrumentation import ServerTelemetry
from meshkit.logging import request_id_var, trace_id_var
from meshkit.middleware import RequestContext, RequestContextMiddleware


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
    async with RequestContext(scope, receive, send, ServerTelemetry(), route="/ws") as send_ids:
        await app(scope, receive, send_ids)

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


def _http_scope() -> Scope:
    return {"type": "http", "method": "GET", "path": "/crash", "headers": []}


async def test_a_crash_after_the_answer_began_is_raised_and_is_the_span_error(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("mid-body")

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        sent.append(message)

    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError):
        await RequestContextMiddleware(app)(_http_scope(), receive, send)

    assert [m["type"] for m in sent] == ["http.response.start"]  # no second answer
    (span,) = spans.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert (attributes["http.response.status_code"], attributes["error.type"]) == (
        200,
        "RuntimeError",
    )
    assert [r.getMessage() for r in caplog.records if r.name == "meshkit.access"] == [
        "GET /crash 200"
    ]
    assert (request_id_var.get(), trace_id_var.get()) == (None, None)


async def test_a_crash_whose_problem_cannot_be_sent_raises_the_send_failure(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("before any answer")

    async def receive() -> Message:
        return {"type": "http.request"}

    async def send(message: Message) -> None:
        raise OSError("the client is gone")

    with caplog.at_level(logging.INFO), pytest.raises(OSError, match="the client is gone"):
        await RequestContextMiddleware(app)(_http_scope(), receive, send)

    (span,) = spans.get_finished_spans()
    assert (span.attributes or {})["error.type"] == "OSError"
    assert [r.name for r in caplog.records if r.name.startswith("meshkit.")] == [
        "meshkit.errors",
        "meshkit.access",
    ]
    assert (request_id_var.get(), trace_id_var.get()) == (None, None)


async def test_with_the_sdk_disabled_no_context_is_current_but_the_callers_trace_id_is_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    current: list[bool] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        current.append(trace.get_current_span().get_span_context().is_valid)
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        sent.append(message)

    traceparent = f"00-{trace_id}-00f067aa0ba902b7-01".encode()
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [(b"traceparent", traceparent)],
    }
    await RequestContextMiddleware(app)(scope, receive, send)

    assert current == [False]
    assert dict(sent[0]["headers"])[b"x-trace-id"] == trace_id.encode()
