"""The gateway's ASGI entry: paths under an upstream's prefix go to the forwarders on the lean
path — meshkit's request context (the server span when this process traces, ids, access log,
security headers; the one wrapper of `send`), the forwarder — and everything else (docs,
OpenAPI, probes, unknown paths: 404 problem) to the FastAPI app."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from mesh_gateway.routing import Route, RouteTable
from meshkit.middleware import RequestContextMiddleware

if TYPE_CHECKING:
    from mesh_gateway.state import GatewayState

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_ROUTE_KEY = "mesh_gateway.route"


class Gateway:
    """Dispatches by path: forwarded routes on the lean path, the rest to the FastAPI app."""

    def __init__(self, api: FastAPI, routes: RouteTable) -> None:
        self.api = api
        self.routes = routes
        self._with_context = RequestContextMiddleware(
            self._forward, default_headers=SECURITY_HEADERS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            route = self.routes.match(scope["path"])
            if route is not None:
                scope[_ROUTE_KEY] = route
                # The server span and the duration are named by the route's prefix; the
                # upstream call becomes the span's child client span.
                await self._with_context.serve(
                    scope,
                    receive,
                    send,
                    route=route.prefix,
                    span_attributes={"gateway.upstream": route.upstream},
                )
                return
        await self.api(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: Route = scope[_ROUTE_KEY]
        state: GatewayState = self.api.state.gateway
        upstream = state.upstreams[route.upstream]
        if scope["type"] == "websocket":
            await state.websocket(scope, receive, send, upstream)
        else:
            await state.http(scope, receive, send, upstream)
