"""Telemetry survives gunicorn's pre-fork model: every worker exports, and a graceful stop
flushes what is still buffered."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from meshdev.otlp import OtlpReceiver
from meshdev.postgres import sqlalchemy_url
from meshdev.processes import ServiceProcess, access_records

REQUESTS = 60  # at least
MAX_BATCHES = 30  # of 20 requests


async def test_spans_of_every_worker_arrive_and_none_are_lost_on_sigterm(
    throwaway_database: str, jwt_key_file: Path, log_dir: Path, rabbitmq_url: str
) -> None:
    receiver = OtlpReceiver().start()
    process = ServiceProcess(
        "users_service",
        env={
            "ENVIRONMENT": "test",
            "RABBITMQ_URL": rabbitmq_url,
            "DATABASE_URL": sqlalchemy_url(throwaway_database),
            "JWT_PRIVATE_KEY_FILE": str(jwt_key_file),
            **receiver.exporter_env(),
            # Nothing leaves on schedule during the test: only the flush at shutdown sends it.
            "OTEL_BSP_SCHEDULE_DELAY": "600000",
            "OTEL_SERVICE_NAME": "users",
        },
        log_path=log_dir / "users.log",
        workers=2,
    )
    earlier_logs = len(process.logs())  # the log file of an earlier run is appended to
    try:
        process.start()
        await asyncio.to_thread(process.wait_ready, path="/healthz")

        async def fetch_on_a_fresh_connection() -> int:
            async with httpx.AsyncClient(base_url=process.url) as client:
                return (await client.get("/api/auth/jwks.json")).status_code

        def answering_workers() -> set[int]:
            return {
                record["pid"]
                for record in access_records(process.logs()[earlier_logs:])
                if "jwks.json" in record["message"]
            }

        # The kernel hands each new connection to whichever worker accepts first, and one
        # worker can take whole batches: send batches until both have answered (bounded).
        statuses: list[int] = []
        for _ in range(MAX_BATCHES):
            statuses += await asyncio.gather(*(fetch_on_a_fresh_connection() for _ in range(20)))
            if len(statuses) >= REQUESTS and len(answering_workers()) == 2:
                break
        requests = len(statuses)
        assert statuses == [200] * requests
        assert len(answering_workers()) == 2, "both workers answered"
        assert receiver.spans == []  # still buffered in the workers

        await asyncio.to_thread(process.stop)

        def server_spans() -> list[str]:
            return [
                str(span.resource["service.instance.id"])
                for span in receiver.spans
                if span.name == "GET /api/auth/jwks.json" and span.kind == "SERVER"
            ]

        await receiver.wait_for(lambda: len(server_spans()) >= requests, what="flushed spans")
        assert len(server_spans()) == requests
        assert len(set(server_spans())) == 2, "spans of both workers"
        assert {span.service for span in receiver.spans} == {"users"}
        assert not any(span.name.endswith(("/healthz", "/readyz")) for span in receiver.spans)
    finally:
        process.stop()
        receiver.stop()
