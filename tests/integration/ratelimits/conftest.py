"""Two gateway processes (production command) in front of the users service, all counting rate
limits in the machine's real Redis, under a key prefix of this run's own whose keys are deleted
afterwards. Their only way to Redis is a fault proxy, so an outage never touches the machine's
Redis itself."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import pytest

from meshdev.faults import TcpProxy
from meshdev.mesh import MESH
from meshdev.otlp import OtlpReceiver
from meshdev.processes import ServiceProcess
from meshdev.redis import key_prefix, redis_proxy, redis_url
from meshdev.stack import RunningMesh, running_mesh

GATEWAYS = ("gateway-a", "gateway-b")  # their OTEL_SERVICE_NAME, to tell their metrics apart
LIMIT = 5  # per minute and client, across every gateway process
RETRY_SECONDS = 1  # how often a process tries Redis again while it does not answer


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
async def redis_link() -> AsyncIterator[TcpProxy]:
    """The gateways' and users' only way to the machine's Redis."""
    async with redis_proxy() as proxy:
        yield proxy


@pytest.fixture(scope="package")
async def prefix() -> AsyncIterator[str]:
    async with key_prefix("it-ratelimits") as name:
        yield name


@pytest.fixture(scope="package")
def limits_env(redis_link: TcpProxy, prefix: str, otlp: OtlpReceiver) -> dict[str, str]:
    return {
        "RATE_LIMIT": f"{LIMIT}/minute",
        "RATE_LIMIT_STORAGE_URI": redis_url(port=redis_link.port),
        "RATE_LIMIT_KEY_PREFIX": prefix,
        "RATE_LIMIT_STORAGE_RETRY_SECONDS": str(RETRY_SECONDS),
        **otlp.exporter_env(),
    }


@pytest.fixture(scope="package")
async def users(
    tmp_path_factory: pytest.TempPathFactory, limits_env: dict[str, str]
) -> AsyncIterator[RunningMesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("ratelimits"), names=("users",), env=limits_env
    ) as mesh:
        yield mesh


@pytest.fixture(scope="package")
async def gateways(
    users: RunningMesh, limits_env: dict[str, str]
) -> AsyncIterator[tuple[ServiceProcess, ...]]:
    """Two replicas of the gateway, one worker each, routing users only."""
    (gateway,) = [d for d in MESH if d.name == "gateway"]
    wiring = users.wiring.env_for(gateway)
    wiring.pop("PORT")
    processes = tuple(
        ServiceProcess(
            gateway.package,
            env={
                **wiring,
                "ORDERS_URL": "",
                "NOTIFICATIONS_URL": "",
                **limits_env,
                "OTEL_SERVICE_NAME": name,
            },
            log_path=users.processes["users"].log_path.parent / f"{name}.log",
        )
        for name in GATEWAYS
    )
    async with AsyncExitStack() as stack:
        for process in processes:
            stack.push_async_callback(asyncio.to_thread, process.stop)
            process.start()
        for process in processes:
            await asyncio.to_thread(process.wait_ready)
        yield processes
