"""The gateway's ASGI app: the mesh's only public entry point.

Served by `gunicorn --config python:meshkit.gunicorn_conf 'mesh_gateway.main:create_app()'`: the
dispatcher (`mesh_gateway.dispatch`) in front of a small FastAPI app (docs, OpenAPI, probes),
over the state its lifespan builds (`mesh_gateway.state`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp

from mesh_gateway.dispatch import SECURITY_HEADERS, Gateway
from mesh_gateway.docs import DESCRIPTION, TITLE, serve_docs
from mesh_gateway.routing import RouteTable
from mesh_gateway.settings import GatewaySettings
from mesh_gateway.state import gateway_state
from meshkit.app import create_service_app, readiness_checks
from meshkit.auth import TokenVerifier


def create_app(settings: GatewaySettings | None = None) -> ASGIApp:
    settings = settings or GatewaySettings()
    routes = RouteTable(settings.upstream_urls())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        verifier = getattr(app.state, "token_verifier", None)
        if not isinstance(verifier, TokenVerifier):
            raise RuntimeError("the gateway needs JWKS_URL (or USERS_URL) to verify tokens")
        async with gateway_state(settings, routes, verifier) as state:
            app.state.gateway = state
            for name, upstream in state.upstreams.items():
                readiness_checks(app)[name] = upstream.ready
            yield

    api = create_service_app(
        settings,
        title=TITLE,
        description=DESCRIPTION,
        routers=[],
        lifespan=lifespan,
        default_headers=SECURITY_HEADERS,
    )
    serve_docs(api, upstreams=list(settings.upstream_urls()))
    app: ASGIApp = Gateway(api, routes)
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
