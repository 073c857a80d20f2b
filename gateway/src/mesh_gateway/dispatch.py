"""The gateway's ASGI entry: paths under an upstream's prefix go to the forwarders on the lean
path — a server span when this process traces, meshkit's request context (ids, access log,
security headers; the one wrapper of `send`), the forwarder — and everything else (docs,
OpenAPI, probes, unknown paths: 404 problem) to the FastAPI app."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import Receive, Scope, Send

from mesh_gateway.routing import Route, RouteTable
from meshkit.instrumentation import http_duration
from meshkit.middleware import RequestContextMiddleware
from meshkit.telemetry import tracing_enabled

if TYPE_CHECKING:
    from mesh_gateway.state import GatewayState

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_ROUTE_KEY = "mesh_gateway.route"
_TRACE_HEADERS = (b"traceparent", b"tracestate")


class Gateway:
    """Dispatches by path: forwarded routes on the lean path, the rest to the FastAPI app."""

    def __init__(self, api: FastAPI, routes: RouteTable) -> None:
        self.api = api
        self.routes = routes
        self._tracer = trace.get_tracer("mesh_gateway")
        # FastAPI records request durations for its own routes only; forwarded requests are
        # recorded here under the same semantic-convention name, so RED per route covers both.
        self._duration = http_duration("mesh_gateway", "server")
        self._with_context = RequestContextMiddleware(
            self._forward, default_headers=SECURITY_HEADERS
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            route = self.routes.match(scope["path"])
            if route is not None:
                scope[_ROUTE_KEY] = route
                if tracing_enabled():
                    await self._traced(scope, receive, send, route)
                else:
                    # Without telemetry nothing is recorded: no span, no measurement, and no
                    # attributes built for either.
                    await self._with_context.handle(scope, receive, send)
                return
        await self.api(scope, receive, send)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        """The gateway's server span; the upstream call becomes its child client span."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in _TRACE_HEADERS
        }
        method = scope.get("method", "GET")
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"{method} {route.prefix}",
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
        ) as span:
            recording = span.is_recording()
            if recording:
                # Only for a span that is kept: a sampled-out request builds no attributes.
                client = scope.get("client")
                span.set_attributes(
                    {
                        "http.request.method": method,
                        "http.route": route.prefix,
                        "url.path": scope["path"],
                        "url.scheme": scope.get("scheme", "http"),
                        "client.address": client[0] if client else "",
                        "gateway.upstream": route.upstream,
                    }
                )
            status = await self._with_context.handle(scope, receive, send)
            if recording and status:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(StatusCode.ERROR)
        if scope["type"] == "http":
            attributes: dict[str, str | int] = {
                "http.request.method": method,
                "http.route": route.prefix,
                "url.scheme": scope.get("scheme", "http"),
                "http.response.status_code": status,
            }
            if status >= 500 or not status:
                attributes["error.type"] = str(status or "incomplete")
            self._duration.record(time.perf_counter() - started, attributes)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: Route = scope[_ROUTE_KEY]
        state: GatewayState = self.api.state.gateway
        upstream = state.upstreams[route.upstream]
        if scope["type"] == "websocket":
            await state.websocket(scope, receive, send, upstream)
        else:
            await state.http(scope, receive, send, upstream)
