"""One mesh for the fault scenarios: users, orders, notifications and the gateway under their
production commands, with their broker and database links through fault proxies (the machine's
RabbitMQ and PostgreSQL are never touched). Each test leaves the mesh whole again: proxies
restored, every process running and ready."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import httpx
import pytest

from meshdev.customers import Customer, eventually
from meshdev.faults import TcpProxy
from meshdev.postgres import ADMIN_DSN
from meshdev.rabbitmq import BROKER_URL
from meshdev.stack import RunningMesh, running_mesh

MESH = ("users", "orders", "notifications", "gateway")
# What the gateway and the services are given besides the production defaults, and why:
FAULT_ENV = {
    # A few customers make all the load here; per-client limits are tested elsewhere.
    "RATE_LIMIT": "1000/second",
    # The circuit probes an upstream after 2 s instead of 10 s, so recovery fits the budget.
    "BREAKER_RECOVERY_SECONDS": "2",
    # PostgreSQL is shared with other test runs (100 connections in all): small pools.
    "DATABASE_POOL_SIZE": "4",
    "DATABASE_MAX_OVERFLOW": "4",
}


@asynccontextmanager
async def _link(url: str, default_port: int) -> AsyncIterator[TcpProxy]:
    target = urlsplit(url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or default_port).start()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture(scope="package")
async def broker_link() -> AsyncIterator[TcpProxy]:
    """The services' only way to RabbitMQ."""
    async with _link(BROKER_URL, 5672) as proxy:
        yield proxy


@pytest.fixture(scope="package")
async def database_link() -> AsyncIterator[TcpProxy]:
    """The services' only way to PostgreSQL."""
    async with _link(ADMIN_DSN, 5432) as proxy:
        yield proxy


@pytest.fixture(scope="package")
async def shared_mesh(
    tmp_path_factory: pytest.TempPathFactory, broker_link: TcpProxy, database_link: TcpProxy
) -> AsyncIterator[RunningMesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("faults-mesh"),
        names=MESH,
        broker_port=broker_link.port,
        postgres_port=database_link.port,
        env=FAULT_ENV,
    ) as running:
        yield running


@pytest.fixture(scope="package")
async def prober(shared_mesh: RunningMesh) -> AsyncIterator[Customer]:
    """A customer whose requests check that the gateway forwards to every service again."""
    async with httpx.AsyncClient(timeout=10) as client:
        yield await Customer.register(shared_mesh, client)


async def _make_whole(mesh: RunningMesh, prober: Customer, *links: TcpProxy) -> None:
    for link in links:
        await link.restore()
    for process in mesh.processes.values():
        if process.process is None or process.process.poll() is not None:
            process.start()
    for process in mesh.processes.values():
        await asyncio.to_thread(process.wait_ready, timeout=60)
    gateway = mesh.url("gateway")

    async def every_circuit_closed() -> bool:
        # A circuit opened by the last test lets one probe through after its recovery time;
        # until all are closed again the next test would meet fast 503s it did not cause.
        async with httpx.AsyncClient(base_url=gateway, headers=prober.headers) as client:
            for path in ("/api/users/me", "/api/orders?limit=1", "/api/notifications?limit=1"):
                if (await client.get(path)).status_code != 200:
                    return False
        return True

    await eventually(every_circuit_closed, within=30, every=0.25)


@pytest.fixture
async def mesh(
    shared_mesh: RunningMesh, prober: Customer, broker_link: TcpProxy, database_link: TcpProxy
) -> AsyncIterator[RunningMesh]:
    """The shared mesh, whole before the test and made whole again after it."""
    await _make_whole(shared_mesh, prober, broker_link, database_link)
    try:
        yield shared_mesh
    finally:
        await _make_whole(shared_mesh, prober, broker_link, database_link)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=15, limits=limits) as client:
        yield client
