from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from meshdev.api import UsersApi
from meshdev.postgres import (
    asyncpg_dsn,
    create_database,
    drop_database,
    sqlalchemy_url,
    truncate_all,
)
from meshdev.processes import free_port
from meshdev.rabbitmq import amqp_url
from meshdev.stack import RunningMesh, running_mesh
from meshkit.migrations import upgrade_to_head
from orders_service.main import create_app
from orders_service.migrate import MIGRATIONS
from orders_service.settings import OrdersSettings


@pytest.fixture(scope="session")
async def users_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningMesh]:
    """The real users service (tokens, JWKS, the user check) and a throw-away vhost."""
    async with running_mesh(tmp_path_factory.mktemp("orders-users"), names=("users",)) as mesh:
        yield mesh


@pytest.fixture(scope="session")
async def orders_database() -> AsyncIterator[str]:
    name = await create_database("orders_test")
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(name))
    yield name
    await drop_database(name)


@pytest.fixture
def settings(users_mesh: RunningMesh, orders_database: str) -> OrdersSettings:
    return OrdersSettings(
        environment="test",
        # The machine's PostgreSQL is shared by everyone's test runs: keep few connections.
        database_pool_size=2,
        database_max_overflow=4,
        database_url=sqlalchemy_url(orders_database),
        rabbitmq_url=amqp_url(users_mesh.vhost),
        users_url=users_mesh.url("users"),
        jwks_url=f"{users_mesh.url('users')}/api/auth/jwks.json",
        # Longer than any test: what a test sees published, the service's own wake-up sent.
        outbox_poll_interval_seconds=60,
    )


async def _serve(settings: OrdersSettings) -> AsyncIterator[httpx.AsyncClient]:
    application: FastAPI = create_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://orders.test") as client:
            yield client


@pytest.fixture
async def client(
    settings: OrdersSettings, orders_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _serve(settings):
        yield client
    await truncate_all(orders_database)


@pytest.fixture
async def polling_client(
    settings: OrdersSettings, orders_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The orders service with a relay that polls often: postponed rows are found by polling."""
    async for client in _serve(settings.model_copy(update={"outbox_poll_interval_seconds": 0.2})):
        yield client
    await truncate_all(orders_database)


@pytest.fixture
async def client_without_users(
    settings: OrdersSettings, orders_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The orders service while the users service cannot be reached (nothing listens there)."""
    unreachable = settings.model_copy(update={"users_url": f"http://127.0.0.1:{free_port()}"})
    async for client in _serve(unreachable):
        yield client
    await truncate_all(orders_database)


async def _token(users_mesh: RunningMesh) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=users_mesh.url("users")) as http:
        users = UsersApi(http)
        email = f"buyer-{secrets.token_hex(6)}@example.com"
        return {"Authorization": f"Bearer {await users.token(email)}"}


@pytest.fixture
async def alice(users_mesh: RunningMesh) -> dict[str, str]:
    """Authorization headers of a freshly registered user."""
    return await _token(users_mesh)


@pytest.fixture
async def bob(users_mesh: RunningMesh) -> dict[str, str]:
    return await _token(users_mesh)


@pytest.fixture
async def orders_db(orders_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(orders_database))
    try:
        yield connection
    finally:
        await connection.close()
