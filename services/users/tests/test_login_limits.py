"""The failed-login limit across replicas: counted in the machine's real Redis (under a key
prefix of the test's own, deleted afterwards), and per replica while Redis is out of reach (an
outage made by a fault proxy, never by touching the machine's Redis)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager

from meshdev.api import PASSWORD, UsersApi
from meshdev.faults import TcpProxy
from meshdev.postgres import truncate_all
from meshdev.redis import key_prefix, keys_under, redis_url
from users_service.main import create_app
from users_service.settings import UsersSettings

Replicas = Callable[[str], AbstractAsyncContextManager[tuple[UsersApi, UsersApi]]]


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with key_prefix("users-test") as name:
        yield name


@pytest.fixture
def replicas(settings: UsersSettings, users_database: str, prefix: str) -> Replicas:
    """`async with replicas(storage_uri) as (first, second):` two users apps, one database."""

    @asynccontextmanager
    async def start(storage_uri: str) -> AsyncIterator[tuple[UsersApi, UsersApi]]:
        shared = settings.model_copy(
            update={"rate_limit_storage_uri": storage_uri, "rate_limit_key_prefix": prefix}
        )
        async with AsyncExitStack() as stack:
            stack.push_async_callback(truncate_all, users_database)
            apis = []
            for name in ("first", "second"):
                app = create_app(shared)
                await stack.enter_async_context(LifespanManager(app))
                transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
                client = httpx.AsyncClient(transport=transport, base_url=f"http://{name}.test")
                apis.append(UsersApi(await stack.enter_async_context(client)))
            yield apis[0], apis[1]

    return start


async def test_failed_logins_are_counted_across_replicas_sharing_redis(
    replicas: Replicas, prefix: str
) -> None:
    async with replicas(redis_url()) as (first, second):
        await first.register()
        for api in (first, second) * 5:
            assert (await api.login(password="wrong password")).status_code == 401

        limited = [await first.login(), await second.login()]

        assert [r.status_code for r in limited] == [429, 429]
        assert await keys_under(prefix)


async def test_without_redis_each_replica_limits_on_its_own_and_logins_still_work(
    replicas: Replicas, redis_link: TcpProxy
) -> None:
    async with replicas(redis_url(port=redis_link.port)) as (first, second):
        await first.register()
        await redis_link.cut()

        assert (await first.login(password=PASSWORD)).status_code == 200  # never closed
        for _ in range(10):
            assert (await first.login(password="wrong password")).status_code == 401
        limited = await first.login()
        elsewhere = await second.login()

    assert limited.status_code == 429  # this replica still counts the guesses
    assert elsewhere.status_code == 200  # another one does not know of them
