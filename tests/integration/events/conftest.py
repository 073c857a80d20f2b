"""The three services under their production command, with throw-away databases and vhost."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from meshdev.stack import RunningMesh, running_mesh


@pytest.fixture(scope="session")
async def mesh(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningMesh]:
    # Two workers per service: relays share the outbox, consumers compete for the queue, and
    # each worker pushes to its own SSE/WebSocket clients.
    async with running_mesh(tmp_path_factory.mktemp("events-mesh"), workers=2) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client
