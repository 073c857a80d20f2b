"""Two gateway processes (production command) in front of users and notifications, holding
their stream leases and rate limits in the machine's real Redis under a key prefix of this
run's own (deleted afterwards). Each gateway's ordinary pool is smaller than one user's stream
cap, so streams that drew from it would starve every other user's requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack

import pytest

from meshdev.mesh import MESH
from meshdev.otlp import OtlpReceiver
from meshdev.processes import ServiceProcess
from meshdev.redis import key_prefix, redis_url
from meshdev.stack import RunningMesh, running_mesh

GATEWAYS = ("gateway-a", "gateway-b")  # their OTEL_SERVICE_NAME, to tell their metrics apart
STREAM_CAP = 8  # the default: what a user gets with a few tabs open
POOL = 3  # ordinary connections per upstream and gateway process: below the stream cap
LEASE_SECONDS = 9  # short, so a killed gateway's leases expire within a test


@pytest.fixture(scope="package")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="package")
async def prefix() -> AsyncIterator[str]:
    async with key_prefix("it-streams") as name:
        yield name


@pytest.fixture(scope="package")
async def services(
    tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> AsyncIterator[RunningMesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("streams"),
        names=("users", "notifications"),
        env=otlp.exporter_env(),
    ) as mesh:
        yield mesh


@pytest.fixture(scope="package")
def gateway_process(
    services: RunningMesh, prefix: str, otlp: OtlpReceiver
) -> Callable[[str], ServiceProcess]:
    """`gateway_process(name)`: one more gateway (one worker) of this mesh, not started."""
    (gateway,) = [d for d in MESH if d.name == "gateway"]
    wiring = services.wiring.env_for(gateway)
    wiring.pop("PORT")

    def build(name: str) -> ServiceProcess:
        return ServiceProcess(
            gateway.package,
            env={
                **wiring,
                "ORDERS_URL": "",
                "RATE_LIMIT_STORAGE_URI": redis_url(),
                "RATE_LIMIT_KEY_PREFIX": prefix,
                "UPSTREAM_MAX_CONNECTIONS": str(POOL),
                "STREAM_LEASE_SECONDS": str(LEASE_SECONDS),
                **otlp.exporter_env(),
                "OTEL_SERVICE_NAME": name,
            },
            log_path=services.processes["users"].log_path.parent / f"{name}.log",
        )

    return build


@pytest.fixture(scope="package")
async def gateways(
    gateway_process: Callable[[str], ServiceProcess],
) -> AsyncIterator[tuple[ServiceProcess, ...]]:
    """Two replicas of the gateway sharing Redis."""
    processes = tuple(gateway_process(name) for name in GATEWAYS)
    async with AsyncExitStack() as stack:
        for process in processes:
            stack.push_async_callback(asyncio.to_thread, process.stop)
            process.start()
        for process in processes:
            await asyncio.to_thread(process.wait_ready)
        yield processes
