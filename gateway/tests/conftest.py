"""Fixtures: the real users service (production command), a stand-in for orders and
notifications on a loopback port, and gateways built with the settings each test needs."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from meshdev.api import UsersApi
from meshdev.postgres import create_database, drop_database, sqlalchemy_url
from meshdev.processes import ServiceProcess

from mesh_gateway.main import create_app
from mesh_gateway.settings import GatewaySettings
from meshkit.migrations import upgrade_to_head
from users_service.migrate import MIGRATIONS

from .servers import serve
from .upstream_app import UpstreamControl, create_upstream_app

ARTIFACTS = Path(__file__).resolve().parents[2] / ".test-artifacts" / "gateway"

GatewayFactory = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def users_url(
    tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> AsyncIterator[str]:
    """The real users service, started with the production command on a free port."""
    database = await create_database("gateway_users_test")
    key_file = tmp_path_factory.mktemp("keys") / "jwt.pem"
    key_file.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    process = ServiceProcess(
        "users_service",
        env={
            "ENVIRONMENT": "test",
            "DATABASE_URL": sqlalchemy_url(database),
            "JWT_PRIVATE_KEY_FILE": str(key_file),
            "OTEL_SERVICE_NAME": "users",
            "OTEL_SDK_DISABLED": "true",
        },
        log_path=artifacts / "users.log",
    )
    try:
        await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(database))
        process.start()
        await asyncio.to_thread(process.wait_ready)
        yield process.url
    finally:
        process.stop()
        await drop_database(database)


@pytest.fixture(scope="session")
def upstream_control() -> UpstreamControl:
    return UpstreamControl()


@pytest.fixture(scope="session")
async def stand_in_url(upstream_control: UpstreamControl) -> AsyncIterator[str]:
    """Plays orders and notifications (both prefixes are served by one stand-in)."""
    async with serve(create_upstream_app(upstream_control)) as url:
        yield url


@pytest.fixture(scope="session")
def gateway_settings(users_url: str, stand_in_url: str) -> Callable[..., GatewaySettings]:
    def build(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "environment": "test",
            "users_url": users_url,
            "orders_url": stand_in_url,
            "notifications_url": stand_in_url,
            "rate_limit_enabled": False,
            "body_limit_bytes": 256 * 1024,
            "upstream_read_timeout": 1.0,
            "breaker_failure_threshold": 3,
            "breaker_recovery_seconds": 0.5,
            "openapi_refresh_seconds": 5.0,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return build


@pytest.fixture(scope="session")
def start_gateway(gateway_settings: Callable[..., GatewaySettings]) -> GatewayFactory:
    """`async with start_gateway(**settings) as url:` a gateway on a free loopback port."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[str]:
        async with serve(create_app(gateway_settings(**overrides))) as url:
            yield url

    return start


@pytest.fixture(scope="session")
async def gateway_url(start_gateway: GatewayFactory) -> AsyncIterator[str]:
    """The gateway most tests share: rate limits off, small body limit, 1 s read timeout."""
    async with start_gateway() as url:
        yield url


@pytest.fixture
async def client(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as http:
        yield http


@pytest.fixture(scope="session")
async def token(gateway_url: str) -> str:
    """A real access token, obtained through the gateway (registration and login are public)."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as http:
        return await UsersApi(http).token(f"gw-{uuid.uuid4().hex[:8]}@example.com")


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def fresh_hits(upstream_control: UpstreamControl) -> list[str]:
    upstream_control.hits.clear()
    return upstream_control.hits
