"""`create_service_app()`: telemetry, health, problem+json, request ids and logging in one call."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, MutableMapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from opentelemetry import trace

from meshkit.auth import JwksKeySource, TokenVerifier
from meshkit.db import Database
from meshkit.health import ReadinessCheck, health_router
from meshkit.http_client import create_http_client
from meshkit.logging import configure_logging
from meshkit.middleware import RequestContextMiddleware
from meshkit.problems import (
    PROBLEM_MEDIA_TYPE,
    PROBLEM_RESPONSES,
    Problem,
    install_problem_handlers,
)
from meshkit.settings import ServiceSettings
from meshkit.telemetry import configure_telemetry

ServiceLifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def readiness_checks(app: FastAPI) -> MutableMapping[str, ReadinessCheck]:
    """The app's named readiness checks; a service lifespan adds its own (e.g. the broker)."""
    checks: MutableMapping[str, ReadinessCheck] = app.state.readiness
    return checks


def app_state(name: str) -> Any:
    """A dependency on `app.state.<name>`, which the lifespan sets (async: FastAPI runs a plain
    `def` dependency in its thread pool, a hand-off per request)."""

    async def from_state(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(from_state)


def create_service_app(
    settings: ServiceSettings,
    *,
    title: str,
    routers: Sequence[APIRouter],
    description: str = "",
    lifespan: ServiceLifespan | None = None,
    default_headers: Sequence[tuple[bytes, bytes]] = (),
) -> FastAPI:
    """Build a service's FastAPI app. Engines and clients are created in the lifespan, i.e. in
    each gunicorn worker after the fork, and closed when the worker stops. `default_headers`
    go on every answer that does not set them itself."""
    configure_logging(settings.service_name, settings.log_level, settings.log_format)
    configure_telemetry(
        service_name=settings.service_name,
        service_version=settings.service_version,
        environment=settings.environment.value,
    )

    @asynccontextmanager
    async def service_lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.readiness = {}
        async with AsyncExitStack() as stack:
            if settings.database_url is not None:
                database = Database(
                    str(settings.database_url),
                    pool_size=settings.database_pool_size,
                    max_overflow=settings.database_max_overflow,
                    pre_ping=settings.database_pool_pre_ping,
                )
                stack.push_async_callback(database.dispose)
                app.state.database = database
                app.state.readiness["database"] = database.ping
            if settings.jwks_url is not None:
                jwks_client = create_http_client(read_timeout=2.0)
                stack.push_async_callback(jwks_client.aclose)
                keys = JwksKeySource(settings.jwks_url, jwks_client)
                app.state.token_verifier = TokenVerifier(
                    keys, issuer=settings.jwt_issuer, audience=settings.jwt_audience
                )
            if lifespan is not None:
                await stack.enter_async_context(lifespan(app))
            try:
                yield
            finally:
                # Spans of the last requests leave before the worker exits; the gunicorn
                # `worker_exit` hook shuts the providers down.
                provider = trace.get_tracer_provider()
                force_flush = getattr(provider, "force_flush", None)
                if force_flush is not None:
                    force_flush()

    app = FastAPI(
        title=title,
        description=description,
        version=settings.service_version,
        lifespan=service_lifespan,
        # The server span and its duration are RequestContextMiddleware's (ServerTelemetry):
        # FastAPI's own cost a request the sampler drops as much as the rest of its telemetry.
        telemetry={"tracing": False, "metrics": False, "logs": False, "auto_configure": False},
    )
    install_problem_handlers(app)
    app.add_middleware(RequestContextMiddleware, default_headers=default_headers)
    app.include_router(health_router(readiness_checks))
    for router in routers:
        app.include_router(router, responses=PROBLEM_RESPONSES)
    _document_problems(app)
    return app


def _document_problems(app: FastAPI) -> None:
    """Describe 422 (and every other error) as the problem+json body the service really sends."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(problem_schema.pop("$defs", {}))
        components["Problem"] = problem_schema
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        problem_content = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if "422" in responses or "parameters" in operation or "requestBody" in operation:
                    responses["422"] = {
                        "description": "Validation error",
                        "content": problem_content,
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
