"""The gateway's ASGI entry: a path under an upstream's prefix is forwarded on the lean path —
in meshkit's request context (the server span when this process traces, ids, access log,
security headers; the one wrapper of `send`), straight to the forwarder — and everything else
(docs, OpenAPI, probes, unknown paths: 404 problem) goes to the FastAPI app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from mesh_gateway.routing import RouteTable
from meshkit.instrumentation import ServerTelemetry
from meshkit.middleware import RequestContext

if TYPE_CHECKING:
    from mesh_gateway.state import GatewayState

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)


class Gateway:
    """Dispatches by path: forwarded routes on the lean path, the rest to the FastAPI app."""

    def __init__(self, api: FastAPI, routes: RouteTable) -> None:
        self.api = api
        self.routes = routes
        self._telemetry = ServerTelemetry()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.match(scope["path"]) if scope["type"] in ("http", "websocket") else None
        if route is None:
            await self.api(scope, receive, send)  # its lifespan, pages, probes and 404s
            return
        # The upstream call becomes the server span's child client span. (No keyword arguments:
        # they make the class call dearer, on every request.)
        async with RequestContext(
            scope,
            receive,
            send,
            self._telemetry,
            SECURITY_HEADERS,
            route.prefix,  # names the server span and the duration
            {"gateway.upstream": route.upstream},  # on the span when it records
        ) as send_with_ids:
            state: GatewayState = self.api.state.gateway
            upstream = state.upstreams[route.upstream]
            if scope["type"] == "websocket":
                await state.websocket(scope, receive, send_with_ids, upstream)
            else:
                await state.http(scope, receive, send_with_ids, upstream)
