"""Which OTLP protocol each signal is exported with, what is refused, which signals are
recorded at all (only those with somewhere to go), and what logging gets when logs are
exported (the OpenTelemetry logs bridge) and when they are not."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Request
from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler
from sqlalchemy import text

from meshdev.postgres import sqlalchemy_url
from meshdev.pytest_plugin import metric_points, recorded
from meshkit import telemetry
from meshkit.app import create_service_app
from meshkit.http_client import create_http_client
from meshkit.logging import add_export_handler, remove_export_handler, request_id_var
from meshkit.settings import ServiceSettings
from meshkit.telemetry import TelemetryConfigError, otlp_protocol

PROTOCOL_VARIABLES = [
    f"OTEL_EXPORTER_OTLP_{signal}PROTOCOL" for signal in ("", "TRACES_", "METRICS_", "LOGS_")
]


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in PROTOCOL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_every_signal_goes_over_http_protobuf_by_default(environment: pytest.MonkeyPatch) -> None:
    assert [otlp_protocol(s) for s in telemetry.SIGNALS] == ["http/protobuf"] * 3


def test_a_signals_own_protocol_wins_over_the_general_one(environment: pytest.MonkeyPatch) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    environment.setenv("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "http/protobuf")

    assert [otlp_protocol(s) for s in telemetry.SIGNALS] == ["grpc", "grpc", "http/protobuf"]


@pytest.mark.parametrize("value", ["http/json", "grpc+tls", "HTTP"])
def test_a_protocol_no_exporter_speaks_is_refused_naming_the_variable_and_the_choices(
    environment: pytest.MonkeyPatch, value: str
) -> None:
    environment.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", value)

    with pytest.raises(TelemetryConfigError) as refused:
        telemetry.check_telemetry_environment()

    assert str(refused.value) == (
        f"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL={value!r} is not supported: "
        "use http/protobuf (the default) or grpc"
    )


def test_exported_records_are_stamped_and_redacted_like_printed_lines() -> None:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider, handler = telemetry.log_bridge(Resource.create({"service.name": "orders"}), exporter)
    logger = logging.getLogger("meshkit.test.bridge")
    logger.setLevel(logging.INFO)
    add_export_handler(handler)
    try:
        with trace.get_tracer("test").start_as_current_span("request") as span:
            token = request_id_var.set("req-1")
            try:
                logger.info("GET %s", "/ws?access_token=secret", extra={"http_status": 101})
            finally:
                request_id_var.reset(token)
        logging.getLogger("opentelemetry.exporter.otlp.proto.http").error("export failed")
        provider.force_flush()
    finally:
        remove_export_handler(handler)
        provider.shutdown()

    (record,) = [r.log_record for r in exporter.get_finished_logs()]
    assert record.body == "GET /ws?access_token=[REDACTED]"
    assert record.trace_id == span.get_span_context().trace_id
    assert record.span_id == span.get_span_context().span_id
    assert dict(record.attributes or {}) == {"request_id": "req-1", "http_status": 101}


SIGNALS = """
import json, logging, sys
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from meshkit.logging import configure_logging
from meshkit.telemetry import configure_telemetry, metrics_enabled, tracing_enabled
configure_logging("orders")
configure_telemetry(
    service_name="orders",
    service_version="0",
    environment="test",
    span_processors=(SimpleSpanProcessor(InMemorySpanExporter()),) if "spans" in sys.argv else (),
    metric_readers=(InMemoryMetricReader(),) if "readers" in sys.argv else (),
)
loggers = [logging.getLogger(), logging.getLogger("gunicorn.error")]
print(json.dumps({
    "traces": [tracing_enabled(), isinstance(trace.get_tracer_provider(), TracerProvider)],
    "metrics": [metrics_enabled(), isinstance(metrics.get_meter_provider(), MeterProvider)],
    "logs": [[type(h).__name__ for h in logger.handlers] for logger in loggers],
}))
"""
PRINTED = ["StreamHandler"]
EXPORTED = ["StreamHandler", "LoggingHandler"]
ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}


@pytest.mark.parametrize(
    ("environment", "extras", "traces", "metrics", "logs"),
    [
        ({}, [], False, False, PRINTED),  # `make run`: not one more call per request or record
        (ENDPOINT, [], True, True, EXPORTED),
        (
            {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9/v1/logs"},
            [],
            False,
            False,
            EXPORTED,
        ),
        ({**ENDPOINT, "OTEL_LOGS_EXPORTER": "none"}, [], True, True, PRINTED),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "none"}, [], False, True, EXPORTED),
        ({**ENDPOINT, "OTEL_METRICS_EXPORTER": "none"}, [], True, False, EXPORTED),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, [], False, False, PRINTED),
        ({}, ["spans"], True, False, PRINTED),  # what the tests pass in
        ({}, ["readers"], False, True, PRINTED),
    ],
    ids=[
        "no-endpoint",
        "endpoint",
        "logs-endpoint",
        "logs-none",
        "traces-none",
        "metrics-none",
        "sdk-disabled",
        "span-processor",
        "metric-reader",
    ],
)
def test_a_signal_gets_the_sdk_only_with_somewhere_to_go(
    environment: dict[str, str], extras: list[str], traces: bool, metrics: bool, logs: list[str]
) -> None:
    """An exporter or an extra processor installs a signal's SDK provider; without one the
    API's no-op provider stays, and spans, measurements and log records are never built. The
    root logger and gunicorn's (which prints on its own) get the logs bridge, or nothing."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", SIGNALS, *extras],
        env={**clean, **environment},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == {
        "traces": [traces, traces],
        "metrics": [metrics, metrics],
        "logs": [logs, logs],
    }


router = APIRouter(prefix="/api/clock")


@router.get("/now")
async def now(request: Request, upstream: str) -> dict[str, str]:
    """A statement and a call to another service, as a route of a service makes them."""
    async with request.app.state.database.connect() as connection:
        value = await connection.scalar(text("SELECT now()::text"))
    async with create_http_client(connect_retries=0) as client:
        await client.get(upstream)
    return {"now": str(value)}


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """Another service's URL: it answers 204."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("installed", "span_names", "measured", "pool_reported"),
    [
        ((), [], {}, False),
        (("tracer",), ["SELECT", "GET", "GET /api/clock/now"], {}, False),
        (
            ("meter",),
            [],
            {"http.server.request.duration": 1, "http.client.request.duration": 1},
            True,
        ),
    ],
    ids=["nowhere-to-send", "traces-only", "metrics-only"],
)
async def test_a_request_records_only_the_signals_with_somewhere_to_go(
    monkeypatch: pytest.MonkeyPatch,
    nowhere_to_send: None,
    spans: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    upstream: str,
    installed: tuple[str, ...],
    span_names: list[str],
    measured: dict[str, int],
    pool_reported: bool,
) -> None:
    """Server, SQL and client spans only while tracing; durations and pool gauges only while
    measuring; with neither, none of that work is done. The answer carries its ids anyway."""
    providers = {"tracer": trace.get_tracer_provider(), "meter": metrics.get_meter_provider()}
    for name in installed:
        monkeypatch.setitem(telemetry._state, name, providers[name])
    settings = ServiceSettings(
        service_name="clock", environment="test", database_url=sqlalchemy_url("postgres")
    )
    app = create_service_app(settings, title="Clock", routers=[router])
    before = recorded(metric_reader)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://c.test"
        ) as client,
    ):
        response = await client.get("/api/clock/now", params={"upstream": upstream})
        pool = app.state.database.engine.url.render_as_string(hide_password=True)
        pools = {
            p.attributes.get("db.client.connection.pool.name")
            for p in metric_points(metric_reader, "db.client.connection.count")
        }
    after = recorded(metric_reader)

    assert response.status_code == 200
    assert {"x-request-id", "x-trace-id"} <= set(response.headers)
    assert [s.name for s in spans.get_finished_spans()] == span_names
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k)} == measured
    assert (pool in pools) is pool_reported


def _caller(flags: str) -> Context:
    carrier = {"traceparent": f"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}"}
    return propagate.extract(carrier)


@pytest.mark.parametrize(
    ("sampler", "parent", "expected"),
    [
        # The default (parentbased_always_on) follows the caller: its "not sampled" holds.
        (ParentBased(ALWAYS_ON), _caller("00"), True),
        (ParentBased(ALWAYS_ON), _caller("01"), False),
        # No caller: the sampler decides on its own.
        (ParentBased(ALWAYS_ON), Context(), False),
        # A sampler that ignores the caller may record under an unsampled one.
        (ALWAYS_ON, _caller("00"), False),
    ],
    ids=["caller-not-sampled", "caller-sampled", "no-caller", "sampler-ignores-caller"],
)
def test_sampled_out_only_where_the_sampler_follows_an_unsampled_caller(
    monkeypatch: pytest.MonkeyPatch, sampler: Sampler, parent: Context, expected: bool
) -> None:
    monkeypatch.setitem(telemetry._state, "tracer", TracerProvider(sampler=sampler))

    assert telemetry.sampled_out(parent) is expected
