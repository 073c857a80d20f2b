"""The users service as production runs it: gunicorn, several workers, a key file, SIGTERM."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from meshdev.api import PASSWORD, UsersApi
from meshdev.postgres import sqlalchemy_url
from meshdev.processes import ServiceProcess, access_records


def _start_users(database: str, key_file: Path, log_dir: Path, rabbitmq_url: str) -> ServiceProcess:
    process = ServiceProcess(
        "users_service",
        env={
            "ENVIRONMENT": "test",
            "RABBITMQ_URL": rabbitmq_url,
            "OTEL_SERVICE_NAME": "users",
            "DATABASE_URL": sqlalchemy_url(database),
            "JWT_PRIVATE_KEY_FILE": str(key_file),
        },
        log_path=log_dir / "users.log",
        workers=2,
    )
    process.start()
    return process


async def _migrate(database: str) -> None:
    from meshkit.migrations import upgrade_to_head
    from users_service.migrate import MIGRATIONS

    await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(database))


async def test_users_under_gunicorn_register_login_me_and_stop_cleanly(
    throwaway_database: str, jwt_key_file: Path, log_dir: Path, rabbitmq_url: str
) -> None:
    await _migrate(throwaway_database)
    process = _start_users(throwaway_database, jwt_key_file, log_dir, rabbitmq_url)
    try:
        await asyncio.to_thread(process.wait_ready)
        async with httpx.AsyncClient(base_url=process.url) as client:
            api = UsersApi(client)
            token = await api.token("ada@example.com")
            # Several requests spread over both workers: every one verifies the same key.
            statuses = {
                (
                    await client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})
                ).status_code
                for _ in range(20)
            }
            ready = await client.get("/readyz")
    finally:
        exit_code = await asyncio.to_thread(process.stop)

    assert statuses == {200}
    assert ready.json()["checks"] == ["broker", "database"]
    assert exit_code == 0
    logs = process.logs()
    assert PASSWORD not in logs
    access_lines = access_records(logs)
    assert access_lines
    assert all(line["service"] == "users" and line["trace_id"] for line in access_lines)


async def test_readiness_fails_while_the_database_is_missing(
    jwt_key_file: Path, log_dir: Path, rabbitmq_url: str
) -> None:
    process = _start_users("no_such_database_here", jwt_key_file, log_dir, rabbitmq_url)
    try:
        await asyncio.to_thread(process.wait_ready, path="/healthz")
        async with httpx.AsyncClient(base_url=process.url) as client:
            ready = await client.get("/readyz")
    finally:
        await asyncio.to_thread(process.stop)

    assert ready.status_code == 503
    assert ready.headers["content-type"] == "application/problem+json"
    assert "database" in ready.json()["detail"]
