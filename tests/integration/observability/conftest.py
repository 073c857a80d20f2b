"""The whole mesh exporting its telemetry to an OTLP receiver run by the test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from meshdev.otlp import OtlpReceiver
from meshdev.stack import RunningMesh, running_mesh


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
async def traced_mesh(
    tmp_path_factory: pytest.TempPathFactory, otlp: OtlpReceiver
) -> AsyncIterator[RunningMesh]:
    async with running_mesh(
        tmp_path_factory.mktemp("traced-mesh"),
        names=("users", "orders", "notifications", "gateway"),
        workers=2,
        env=otlp.exporter_env(),
    ) as running:
        yield running


@pytest.fixture
async def gateway(traced_mesh: RunningMesh) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=traced_mesh.url("gateway"), timeout=10) as client:
        yield client
