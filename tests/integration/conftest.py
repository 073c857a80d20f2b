"""Fixtures for tests that start deployables with their production command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshdev.postgres import create_database, drop_database
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from meshdev.stack import write_signing_key

ARTIFACTS = Path(__file__).resolve().parents[2] / ".test-artifacts"


@pytest.fixture(scope="session")
def jwt_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_signing_key(tmp_path_factory.mktemp("keys"))


@pytest.fixture
async def rabbitmq_url() -> AsyncIterator[str]:
    """A throw-away vhost: the machine's own broker is left as it was."""
    vhost = await create_vhost("it")
    try:
        yield amqp_url(vhost)
    finally:
        await delete_vhost(vhost)


@pytest.fixture
async def throwaway_database() -> AsyncIterator[str]:
    name = await create_database("it")
    try:
        yield name
    finally:
        await drop_database(name)


@pytest.fixture
def log_dir(request: pytest.FixtureRequest) -> Path:
    """Process logs stay in .test-artifacts/ for a failed run to be read."""
    path: Path = ARTIFACTS / "logs" / request.node.name
    path.mkdir(parents=True, exist_ok=True)
    return path
