"""The request-context middleware on WebSocket handshakes."""

from __future__ import annotations

from starlette.types import Message, Receive, Scope, Send

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
