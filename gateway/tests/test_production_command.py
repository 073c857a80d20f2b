"""The gateway under its production command (gunicorn + uvicorn workers), in front of users."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from meshdev.api import UsersApi
from meshdev.processes import ServiceProcess


@pytest.fixture(scope="module")
async def production_gateway(users_url: str, artifacts: Path) -> AsyncIterator[str]:
    process = ServiceProcess(
        "mesh_gateway",
        env={
            "ENVIRONMENT": "test",
            "USERS_URL": users_url,
            "ORDERS_URL": "",
            "NOTIFICATIONS_URL": "",
            "OTEL_SERVICE_NAME": "gateway",
            "OTEL_SDK_DISABLED": "true",
        },
        log_path=artifacts / "gateway.log",
        workers=2,
    )
    try:
        process.start()
        await asyncio.to_thread(process.wait_ready)
        yield process.url
    finally:
        process.stop()


async def test_register_login_and_call_through_the_production_gateway(
    production_gateway: str,
) -> None:
    async with httpx.AsyncClient(base_url=production_gateway, timeout=10) as client:
        token = await UsersApi(client).token(f"prod-{uuid.uuid4().hex[:8]}@example.com")
        me = await client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
        unrouted = await client.get("/api/orders", headers={"Authorization": f"Bearer {token}"})

    assert me.status_code == 200
    assert me.headers["x-trace-id"]
    assert unrouted.status_code == 404  # orders is not configured in this deployment
