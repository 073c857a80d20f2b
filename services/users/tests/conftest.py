from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from meshdev.api import UsersApi
from meshdev.postgres import create_database, drop_database, sqlalchemy_url, truncate_all
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from meshkit.migrations import upgrade_to_head
from users_service.main import create_app
from users_service.migrate import MIGRATIONS
from users_service.settings import UsersSettings


@pytest.fixture(scope="session")
async def users_database() -> AsyncIterator[str]:
    name = await create_database("users_test")
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(name))
    yield name
    await drop_database(name)


@pytest.fixture(scope="session")
async def vhost() -> AsyncIterator[str]:
    name = await create_vhost("users_test")
    yield name
    await delete_vhost(name)


@pytest.fixture
def settings(users_database: str, vhost: str) -> UsersSettings:
    return UsersSettings(
        database_url=sqlalchemy_url(users_database),
        rabbitmq_url=amqp_url(vhost),
        environment="test",
        # Longer than any test: what a test sees published, the service's own wake-up sent.
        outbox_poll_interval_seconds=60,
    )


@pytest.fixture
async def app(settings: UsersSettings, users_database: str) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application
    await truncate_all(users_database)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://users.test") as client:
        yield client


@pytest.fixture
def api(client: httpx.AsyncClient) -> UsersApi:
    return UsersApi(client)
