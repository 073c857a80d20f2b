"""One service process under its production command, exporting to a real receiver: the
exporters' own records are kept off the log export."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from meshdev.otlp import OtlpReceiver
from meshdev.postgres import sqlalchemy_url
from meshdev.processes import ServiceProcess, free_port

JWKS = "/api/auth/jwks.json"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    try:
        yield receiver
    finally:
        receiver.stop()


def _users(
    log_dir: Path, env: Mapping[str, str], *, database: str = "unused", rabbitmq_url: str = ""
) -> ServiceProcess:
    return ServiceProcess(
        "users_service",
        env={
            "ENVIRONMENT": "test",
            "RABBITMQ_URL": rabbitmq_url,
            "DATABASE_URL": sqlalchemy_url(database),
            "OTEL_SERVICE_NAME": "users",
            **env,
        },
        log_path=log_dir / "users.log",
    )


async def test_the_exporters_own_records_are_printed_but_never_exported(
    receiver: OtlpReceiver,
    throwaway_database: str,
    jwt_key_file: Path,
    log_dir: Path,
    rabbitmq_url: str,
) -> None:
    """A failing export logs; exporting that record would fail and log again, forever."""
    nowhere = f"http://127.0.0.1:{free_port()}/v1/traces"
    process = _users(
        log_dir,
        {
            "JWT_PRIVATE_KEY_FILE": str(jwt_key_file),
            **receiver.exporter_env(),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": nowhere,  # spans fail, logs arrive
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1",
        },
        database=throwaway_database,
        rabbitmq_url=rabbitmq_url,
    )
    earlier_logs = len(process.logs())
    try:
        process.start()
        await asyncio.to_thread(process.wait_ready, path="/healthz")
        await asyncio.to_thread(httpx.get, process.url + JWKS)

        def export_failure_printed() -> bool:
            lines = (json.loads(line) for line in process.logs()[earlier_logs:].splitlines())
            return any(line["logger"].startswith("opentelemetry.exporter") for line in lines)

        await receiver.wait_for(export_failure_printed, within=20, what="a failed span export")
        # Anything logged after the failure is exported: the pipeline runs, it just skips those.
        marker = await asyncio.to_thread(httpx.get, process.url + JWKS)
        trace_id = marker.headers["x-trace-id"]
        await receiver.wait_for(
            lambda: any(r.trace_id == trace_id for r in receiver.log_records),
            what="the record of a request sent after the failure",
        )
        scopes = {record.scope for record in receiver.log_records}
        assert not [s for s in scopes if s.startswith(("opentelemetry", "urllib3", "grpc"))]
    finally:
        await asyncio.to_thread(process.stop)
