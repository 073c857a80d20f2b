"""The gateway's ASGI app: the mesh's only public entry point.

Served by `gunicorn --config python:meshkit.gunicorn_conf mesh_gateway.main:app`.

Shape: a raw ASGI dispatcher in front of a small FastAPI app. Paths under an upstream's prefix go
to the forwarding handlers (`proxy`, `websocket`) inside a gateway server span and meshkit's
request-context middleware; everything else (docs, OpenAPI, probes, unknown paths -> 404 problem)
is the FastAPI app's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline.core import _STATIC_PATH as OFFLINE_DOCS_ASSETS
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, StatusCode
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mesh_gateway.breaker import CircuitBreaker
from mesh_gateway.openapi import MergedApiDocument
from mesh_gateway.proxy import Forwarder, Upstream
from mesh_gateway.ratelimit import ClientRateLimiter
from mesh_gateway.routing import Route, RouteTable
from mesh_gateway.settings import GatewaySettings
from mesh_gateway.websocket import WebSocketForwarder
from meshkit.app import create_service_app, lazy_app, readiness_checks
from meshkit.auth import TokenVerifier
from meshkit.http_client import create_http_client
from meshkit.instrumentation import DURATION_BUCKETS
from meshkit.middleware import RequestContextMiddleware

TITLE = "Mesh API"
DESCRIPTION = (
    "Every public operation of the mesh, through its gateway. Use **Authorize** with your "
    "email and password to call the operations that need a token."
)
ASSETS_PATH = "/docs-assets"
_ROUTE_KEY = "mesh_gateway.route"

SECURITY_HEADERS: list[tuple[bytes, bytes]] = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeadersMiddleware:
    """Adds the security headers to every HTTP response, unless the upstream set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers: list[tuple[bytes, bytes]] = list(message.get("headers", ()))
                present = {name for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class Gateway:
    """Dispatches by path: forwarded routes on the lean path, the rest to the FastAPI app."""

    def __init__(self, api: FastAPI, routes: RouteTable) -> None:
        self.api = api
        self.routes = routes
        self.http: Forwarder | None = None
        self.websocket: WebSocketForwarder | None = None
        self._tracer = trace.get_tracer("mesh_gateway")
        # FastAPI records request durations for its own routes only; forwarded requests are
        # recorded here under the same semantic-convention name, so RED per route covers both.
        self._duration = metrics.get_meter("mesh_gateway").create_histogram(
            "http.server.request.duration",
            unit="s",
            description="Duration of HTTP server requests.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._with_context = RequestContextMiddleware(self._forward)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            route = self.routes.match(scope["path"])
            if route is not None:
                await self._traced(scope, receive, send, route)
                return
        await self.api(scope, receive, send)

    async def _traced(self, scope: Scope, receive: Receive, send: Send, route: Route) -> None:
        """The gateway's server span; the upstream call becomes its child client span."""
        carrier = {
            name.decode("latin-1"): value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"traceparent", b"tracestate")
        }
        method = scope.get("method", "GET")
        status = 0

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        client = scope.get("client")
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            f"{method} {route.prefix}",
            context=propagate.extract(carrier) if carrier else None,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method,
                "http.route": route.prefix,
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "client.address": client[0] if client else "",
                "gateway.upstream": route.upstream,
            },
        ) as span:
            scope[_ROUTE_KEY] = route
            await self._with_context(scope, receive, send_recording)
            if status:
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
        if scope["type"] == "websocket":
            assert self.websocket is not None, "the lifespan has not run"
            await self.websocket(scope, receive, send, route)
            return
        assert self.http is not None, "the lifespan has not run"
        await self.http(scope, receive, send, route)


def _docs_router() -> APIRouter:
    """Swagger UI and ReDoc from packaged assets: no CDN, so they work offline and under a CSP."""
    router = APIRouter(include_in_schema=False)

    @router.get("/docs")
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{TITLE} - Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @router.get("/redoc")
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{TITLE} - ReDoc",
            redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    return router


def create_app(settings: GatewaySettings | None = None) -> ASGIApp:
    settings = settings or GatewaySettings()
    urls = settings.upstream_urls()
    routes = RouteTable(urls)
    gateway: Gateway

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        verifier = getattr(app.state, "token_verifier", None)
        if not isinstance(verifier, TokenVerifier):
            raise RuntimeError("the gateway needs JWKS_URL (or USERS_URL) to verify tokens")
        rate_limiter = (
            ClientRateLimiter(
                limits=settings.rate_limit,
                storage_uri=settings.rate_limit_storage_uri,
                strategy=settings.rate_limit_strategy,
            )
            if settings.rate_limit_enabled
            else None
        )
        async with AsyncExitStack() as stack:
            upstreams: dict[str, Upstream] = {}
            for name, url in urls.items():
                client = create_http_client(
                    connect_timeout=settings.upstream_connect_timeout,
                    read_timeout=settings.upstream_read_timeout,
                    max_connections=settings.upstream_max_connections,
                    connect_retries=0,  # the forwarder retries, and only what is safe to
                )
                stack.push_async_callback(client.aclose)
                upstreams[name] = Upstream(
                    name=name,
                    url=url,
                    client=client,
                    breaker=CircuitBreaker(
                        upstream=name,
                        failure_threshold=settings.breaker_failure_threshold,
                        recovery_seconds=settings.breaker_recovery_seconds,
                    ),
                )
                readiness_checks(app)[name] = upstreams[name].ready
            gateway.http = Forwarder(
                upstreams=upstreams,
                verifier=verifier,
                rate_limiter=rate_limiter,
                body_limit=settings.body_limit_bytes,
                retry_attempts=settings.retry_attempts,
                answer_timeout=settings.upstream_read_timeout,
                stream_timeout=httpx.Timeout(
                    settings.stream_read_timeout,
                    connect=settings.upstream_connect_timeout,
                    pool=settings.upstream_connect_timeout,
                ),
            )
            gateway.websocket = WebSocketForwarder(
                upstreams=upstreams,
                verifier=verifier,
                rate_limiter=rate_limiter,
                open_timeout=settings.upstream_connect_timeout + settings.upstream_read_timeout,
            )
            document = MergedApiDocument(
                clients={name: (u.url, u.client) for name, u in upstreams.items()},
                prefixes={name: routes.prefixes_of(name) for name in upstreams},
                title=TITLE,
                version=settings.service_version,
                description=DESCRIPTION,
                refresh_seconds=settings.openapi_refresh_seconds,
            )
            app.state.api_document = document
            refresher = asyncio.create_task(document.run(), name="openapi-refresh")
            try:
                yield
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher

    api = create_service_app(
        settings, title=TITLE, description=DESCRIPTION, routers=[], lifespan=lifespan
    )
    # FastAPI's own pages load their scripts from a CDN; ours come from packaged assets.
    api.router.routes[:] = [
        route
        for route in api.router.routes
        if getattr(route, "path", None) not in ("/docs", "/redoc")
    ]
    api.include_router(_docs_router())
    api.mount(ASSETS_PATH, StaticFiles(directory=OFFLINE_DOCS_ASSETS), name="docs-assets")

    def merged_openapi() -> dict[str, Any]:
        merged: MergedApiDocument | None = getattr(api.state, "api_document", None)
        return merged.document if merged is not None else {}

    api.openapi = merged_openapi  # type: ignore[method-assign]

    @api.get("/openapi-status", include_in_schema=False)
    async def openapi_status(request: Request) -> dict[str, list[str]]:
        """Which upstream documents are merged into /openapi.json."""
        merged: MergedApiDocument = request.app.state.api_document
        return {"services": sorted(merged.services), "expected": sorted(urls)}

    gateway = Gateway(api, routes)
    app: ASGIApp = SecurityHeadersMiddleware(gateway)
    if settings.cors_allow_origins:
        app = CORSMiddleware(
            app,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
            expose_headers=[
                "X-Request-ID",
                "X-Trace-Id",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=600,
        )
    return app


# Served as `mesh_gateway.main:app`; built in each gunicorn worker on first access.
__getattr__ = lazy_app(create_app)
