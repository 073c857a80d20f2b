"""The orders service's ASGI app.

Served by `gunicorn --config python:meshkit.gunicorn_conf 'orders_service.main:create_app()'`.
Every worker runs its own outbox relay (they share the rows safely, see
`meshkit.messaging.relay`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from meshkit.app import create_service_app
from meshkit.http_client import create_http_client
from meshkit.messaging import publisher_lifespan
from orders_service.models import outbox
from orders_service.routes import routers
from orders_service.settings import OrdersSettings
from orders_service.users import UsersClient


def create_app(settings: OrdersSettings | None = None) -> FastAPI:
    settings = settings or OrdersSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        users_http = create_http_client(
            base_url=settings.users_url,
            connect_timeout=settings.users_connect_timeout_seconds,
            read_timeout=settings.users_read_timeout_seconds,
        )
        app.state.users = UsersClient(users_http)
        try:
            async with publisher_lifespan(app, settings, outbox):
                yield
        finally:
            await users_http.aclose()

    return create_service_app(
        settings,
        title="Orders service",
        description="Place, list and cancel orders; every change is published as an event.",
        routers=routers,
        lifespan=lifespan,
    )
