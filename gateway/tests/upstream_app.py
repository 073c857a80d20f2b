"""A stand-in for the orders and notifications services: a real ASGI app on a loopback port,
with endpoints that misbehave on purpose (slow, huge, streaming, WebSocket echo)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect

CHUNK = b"x" * 65_536


class UpstreamControl:
    """What the test can see and steer in the stand-in service."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.next_event = asyncio.Event()


def create_upstream_app(control: UpstreamControl) -> FastAPI:
    app = FastAPI(title="Stand-in service")

    @app.middleware("http")
    async def count_hits(request: Request, call_next: Any) -> Any:
        if request.url.path.startswith(("/api/", "/internal/")):  # not the gateway's own probes
            control.hits.append(f"{request.method} {request.url.path}")
        return await call_next(request)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def echo(request: Request) -> dict[str, Any]:
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
        except ClientDisconnect:
            size = -1  # the gateway gave up on this body (413)
        return {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size,
        }

    @app.get("/api/orders/echo")
    async def echo_get(request: Request) -> dict[str, Any]:
        """Tells what arrived: method, path, query, headers."""
        return await echo(request)

    @app.post("/api/orders/echo")
    async def echo_post(request: Request) -> dict[str, Any]:
        """Tells what arrived, with the body's size."""
        return await echo(request)

    @app.get("/api/orders/slow")
    async def slow(seconds: float) -> dict[str, float]:
        """Answers after `seconds`."""
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get("/api/orders/big")
    async def big(mib: int) -> StreamingResponse:
        """Streams `mib` MiB."""

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(mib * 16):
                yield CHUNK

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/internal/secret", include_in_schema=False)
    async def secret() -> dict[str, str]:
        return {"secret": "never through the gateway"}

    @app.get("/api/notifications/stream")
    async def stream() -> StreamingResponse:
        """One event at once, then one more each time the test sets `next_event`."""

        async def events() -> AsyncIterator[bytes]:
            number = 0
            while True:
                number += 1
                yield f'event: notification\nid: {number}\ndata: {{"n": {number}}}\n\n'.encode()
                await control.next_event.wait()
                control.next_event.clear()

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.websocket("/api/notifications/ws")
    async def websocket(socket: WebSocket) -> None:
        await socket.accept()
        while True:
            text = await socket.receive_text()
            if text.startswith("close:"):
                await socket.close(code=int(text.removeprefix("close:")), reason="asked to")
                return
            await socket.send_text(text)

    return app
