"""One service process under its production command, exporting to a real receiver: every signal
over OTLP/gRPC, the exporters' own records kept off the log export, and a protocol or log format
it cannot honour refused at start-up in one line."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import httpx
import pytest

from meshdev.otlp import OtlpReceiver
from meshdev.postgres import sqlalchemy_url
from meshdev.processes import ACCESS_LOGGER, ServiceProcess, free_port

JWKS = "/api/auth/jwks.json"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver(grpc=True) as receiver:
        yield receiver


@pytest.fixture
def exporting_users(
    receiver: OtlpReceiver,
    throwaway_database: str,
    jwt_key_file: Path,
    log_dir: Path,
    rabbitmq_url: str,
) -> Callable[[Mapping[str, str]], ServiceProcess]:
    """A users process with its database, broker and signing key, and `env` added."""

    def users(env: Mapping[str, str]) -> ServiceProcess:
        return _users(
            log_dir,
            {"JWT_PRIVATE_KEY_FILE": str(jwt_key_file), **env},
            database=throwaway_database,
            rabbitmq_url=rabbitmq_url,
        )

    return users


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


async def test_a_service_exports_traces_metrics_and_logs_over_grpc(
    receiver: OtlpReceiver, exporting_users: Callable[[Mapping[str, str]], ServiceProcess]
) -> None:
    process = exporting_users(receiver.exporter_env("grpc"))
    try:
        process.start()
        await asyncio.to_thread(process.wait_ready, path="/healthz")
        response = await asyncio.to_thread(httpx.get, process.url + JWKS)
        trace_id = response.headers["x-trace-id"]

        await receiver.wait_for(
            lambda: (
                any(s.trace_id == trace_id for s in receiver.spans)
                and any(r.trace_id == trace_id for r in receiver.log_records)
                and any(p.metric == "http.server.request.duration" for p in receiver.points)
            ),
            what="the request's span, access record and duration metric over gRPC",
        )
        (span,) = [s for s in receiver.spans if s.trace_id == trace_id and s.kind == "SERVER"]
        assert (span.service, span.name) == ("users", f"GET {JWKS}")
        (record,) = [r for r in receiver.log_records if r.trace_id == trace_id]
        assert (record.scope, record.body) == (ACCESS_LOGGER, f"GET {JWKS} 200")
        assert record.span_id == span.span_id
    finally:
        await asyncio.to_thread(process.stop)


async def test_the_exporters_own_records_are_printed_but_never_exported(
    receiver: OtlpReceiver, exporting_users: Callable[[Mapping[str, str]], ServiceProcess]
) -> None:
    """A failing export logs; exporting that record would fail and log again, forever."""
    nowhere = f"http://127.0.0.1:{free_port()}/v1/traces"
    process = exporting_users(
        {
            **receiver.exporter_env(),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": nowhere,  # spans fail, logs arrive
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "1",
        }
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


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "use http/protobuf (the default) or grpc"),
        ("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "grcp", "use http/protobuf (the default) or grpc"),
        ("LOG_FORMAT", "pretty", "use json (the default) or console"),
    ],
)
def test_a_setting_it_cannot_honour_stops_the_service_in_one_line(
    variable: str, value: str, accepted: str, log_dir: Path
) -> None:
    process = _users(log_dir, {variable: value})
    earlier_logs = len(process.logs())
    process.start()
    assert process.process is not None
    try:
        returncode = process.process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    output = process.logs()[earlier_logs:]
    assert returncode != 0
    assert [line for line in output.splitlines() if line.strip()] == [
        f"Error: {variable}={value!r} is not supported: {accepted}"
    ]
