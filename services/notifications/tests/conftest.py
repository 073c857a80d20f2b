from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager

from meshdev.customers import Account, eventually
from meshdev.postgres import (
    asyncpg_dsn,
    create_database,
    drop_database,
    sqlalchemy_url,
    truncate_all,
)
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from meshdev.stack import RunningMesh, running_mesh
from meshkit.messaging import EVENTS_EXCHANGE, CloudEvent, declare_exchanges, to_message
from meshkit.migrations import upgrade_to_head
from notifications_service.main import create_app
from notifications_service.migrate import MIGRATIONS
from notifications_service.settings import NotificationsSettings

DELIVERY_LIMIT = 3

Publish = Callable[..., Awaitable[None]]
OrderEvent = Callable[..., CloudEvent]


@pytest.fixture(scope="session")
async def users_mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningMesh]:
    """The real users service (tokens and JWKS) and a throw-away vhost."""
    async with running_mesh(tmp_path_factory.mktemp("notify-users"), names=("users",)) as mesh:
        yield mesh


@pytest.fixture(scope="session")
async def vhost() -> AsyncIterator[str]:
    """Apart from the users service's: its `user.registered` events must not mix in."""
    name = await create_vhost("notifications_test")
    yield name
    await delete_vhost(name)


@pytest.fixture(scope="session")
async def notifications_database() -> AsyncIterator[str]:
    name = await create_database("notifications_test")
    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(name))
    yield name
    await drop_database(name)


@pytest.fixture
def settings(
    users_mesh: RunningMesh, vhost: str, notifications_database: str
) -> NotificationsSettings:
    return NotificationsSettings(
        environment="test",
        # The machine's PostgreSQL is shared by everyone's test runs: keep few connections.
        database_pool_size=2,
        database_max_overflow=4,
        database_url=sqlalchemy_url(notifications_database),
        rabbitmq_url=amqp_url(vhost),
        jwks_url=f"{users_mesh.url('users')}/api/auth/jwks.json",
        delivery_limit=DELIVERY_LIMIT,
        retry_delay_seconds=0.05,
        # Longer than any test: what a test sees published, the service's own wake-up sent.
        outbox_poll_interval_seconds=60,
    )


@pytest.fixture
async def client(
    settings: NotificationsSettings, notifications_database: str
) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://notify.test") as client:

            async def consuming() -> bool:
                return (await client.get("/readyz")).status_code == 200

            await eventually(consuming)
            yield client
    await truncate_all(notifications_database)
    await _purge_queues(settings)


async def _purge_queues(settings: NotificationsSettings) -> None:
    connection = await aio_pika.connect(settings.rabbitmq_url)
    async with connection:
        channel = await connection.channel()
        for name in (settings.events_queue, f"{settings.events_queue}.dlq"):
            await (await channel.get_queue(name)).purge()


@pytest.fixture
async def db(notifications_database: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(notifications_database))
    try:
        yield connection
    finally:
        await connection.close()


async def _account(users_mesh: RunningMesh) -> Account:
    return await Account.register(users_mesh.url("users"))


@pytest.fixture
async def alice(users_mesh: RunningMesh) -> Account:
    return await _account(users_mesh)


@pytest.fixture
async def bob(users_mesh: RunningMesh) -> Account:
    return await _account(users_mesh)


@pytest.fixture
async def channel(vhost: str) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    connection = await aio_pika.connect(amqp_url(vhost))
    async with connection:
        publish_channel = await connection.channel()
        await declare_exchanges(publish_channel)
        yield publish_channel


def _order_event(user_id: str, event_type: str = "order.created", **data: Any) -> CloudEvent:
    order_id = str(uuid.uuid4())
    return CloudEvent(
        source="orders",
        type=event_type,
        subject=user_id,
        data={"id": order_id, "user_id": user_id, "total_cents": 2500, **data},
    )


@pytest.fixture
def order_event() -> Callable[..., CloudEvent]:
    """`order_event(user_id, type="order.created")`: an event as the orders service sends it."""
    return _order_event


@pytest.fixture
def publish(channel: aio_pika.abc.AbstractChannel) -> Publish:
    """Publishes as the orders relay does (or raw bytes, as a broken publisher would)."""

    async def publish(
        event: CloudEvent | None = None,
        *,
        body: bytes | None = None,
        routing_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        exchange = await channel.get_exchange(EVENTS_EXCHANGE)
        if event is not None:
            message = to_message(event, trace_headers=headers or {})
        else:
            message = aio_pika.Message(body=body or b"", message_id=str(uuid.uuid4()))
        await exchange.publish(message, routing_key=routing_key or (event.type if event else ""))

    return publish
