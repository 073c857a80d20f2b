"""Fixtures for tests that start deployables with their production command."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshdev.postgres import create_database, drop_database

ARTIFACTS = Path(__file__).resolve().parents[2] / ".test-artifacts"


@pytest.fixture(scope="session")
def jwt_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "jwt.pem"
    path.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


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
