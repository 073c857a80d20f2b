"""Which OTLP protocol each signal is exported with, what is refused, and what logging gets
when logs are exported (the OpenTelemetry logs bridge) and when they are not."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler

from meshkit import telemetry
from meshkit.logging import add_export_handler, remove_export_handler, request_id_var
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


EXPORT_HANDLERS = """
import json, logging
from meshkit.logging import configure_logging
from meshkit.telemetry import configure_telemetry
configure_logging("orders")
configure_telemetry(service_name="orders", service_version="0", environment="test")
loggers = [logging.getLogger(), logging.getLogger("gunicorn.error")]
print(json.dumps([[type(h).__name__ for h in logger.handlers] for logger in loggers]))
"""
PRINTED = ["StreamHandler"]
EXPORTED = ["StreamHandler", "LoggingHandler"]


@pytest.mark.parametrize(
    ("environment", "handlers"),
    [
        ({}, PRINTED),  # no endpoint: not one more call per record
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, EXPORTED),
        ({"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://127.0.0.1:9/v1/logs"}, EXPORTED),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_LOGS_EXPORTER": "none"},
            PRINTED,
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
            PRINTED,
        ),
    ],
)
def test_logging_gets_the_bridge_only_when_logs_are_exported(
    environment: dict[str, str], handlers: list[str]
) -> None:
    """The root logger and gunicorn's (which prints on its own) get it, or nothing at all."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", EXPORT_HANDLERS],
        env={**clean, **environment},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert json.loads(done.stdout) == [handlers, handlers]


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
