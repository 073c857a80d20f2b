"""OpenTelemetry for a service process, configured only from the standard `OTEL_*` variables.

Called once per process *after* gunicorn forks (the app is not preloaded), because the SDK's
export threads do not survive a fork. `shutdown_telemetry()` flushes on a graceful stop.

Traces, metrics and logs go out over OTLP, each signal over HTTP/protobuf (the default) or gRPC
(`OTEL_EXPORTER_OTLP_PROTOCOL`, or `OTEL_EXPORTER_OTLP_{TRACES,METRICS,LOGS}_PROTOCOL` for one
signal); any other protocol is refused at start-up rather than ignored.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from opentelemetry import metrics, trace
from opentelemetry._logs import set_logger_provider
from opentelemetry.context import Context
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor, ReadWriteLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased
from opentelemetry.semconv.attributes.deployment_attributes import DEPLOYMENT_ENVIRONMENT_NAME
from opentelemetry.semconv.attributes.service_attributes import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_VERSION,
)

from meshkit.logging import NOT_LOGGED, STAMPED, add_export_handler, remove_export_handler

logger = logging.getLogger("meshkit.telemetry")

_state: dict[str, TracerProvider | MeterProvider | LoggerProvider] = {}
_log_handlers: list[logging.Handler] = []

SIGNALS = ("traces", "metrics", "logs")
OTLP_PROTOCOLS = ("http/protobuf", "grpc")


class TelemetryConfigError(ValueError):
    """An `OTEL_*` variable has a value this process cannot honour."""


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _exports(signal: str) -> bool:
    """Export a signal only when an endpoint is configured: with none, nothing is sent or logged."""
    if os.environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )


def otlp_protocol(signal: str) -> str:
    """The OTLP protocol of `signal`: its own variable, else the general one, else
    http/protobuf. Refuses a value it cannot honour instead of exporting some other way."""
    for name in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = os.environ.get(name, "").strip()
        if not value:
            continue
        if value.lower() not in OTLP_PROTOCOLS:
            raise TelemetryConfigError(
                f"{name}={value!r} is not supported: use http/protobuf (the default) or grpc"
            )
        return value.lower()
    return "http/protobuf"


def check_telemetry_environment() -> None:
    """Fail fast, before anything forks, on an OTLP protocol no signal could be exported with."""
    for signal in SIGNALS:
        otlp_protocol(signal)


def _span_exporter() -> SpanExporter:
    if otlp_protocol("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter() -> MetricExporter:
    if otlp_protocol("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


def _log_exporter() -> LogRecordExporter:
    if otlp_protocol("logs") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
            OTLPLogExporter as GrpcLogExporter,
        )

        return GrpcLogExporter()
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return OTLPLogExporter()


class _WithoutPrintedOnlyFields(LogRecordProcessor):
    """The printed line's `service`, `trace_id` and `span_id` are the exported record's resource
    and trace context already, uvicorn's `color_message` is never logged, and fields without a
    value (no request) are left out."""

    _DROPPED = frozenset((*STAMPED, *NOT_LOGGED)) - {"request_id"}

    def on_emit(self, log_record: ReadWriteLogRecord) -> None:
        attributes = log_record.log_record.attributes
        if not isinstance(attributes, MutableMapping):  # the SDK's are (BoundedAttributes)
            return
        for key in [k for k, v in attributes.items() if v is None or k in self._DROPPED]:
            del attributes[key]

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def log_bridge(
    resource: Resource, exporter: LogRecordExporter
) -> tuple[LoggerProvider, logging.Handler]:
    """The standard library's records as OpenTelemetry log records (the logs bridge of
    opentelemetry-instrumentation-logging), batched to `exporter`; each carries the trace and
    span it was logged in. The handler is for `meshkit.logging.add_export_handler`."""
    from opentelemetry.instrumentation.logging.handler import LoggingHandler

    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(_WithoutPrintedOnlyFields())
    provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    return provider, LoggingHandler(logger_provider=provider)


def _export_logs(resource: Resource) -> None:
    provider, handler = log_bridge(resource, _log_exporter())
    set_logger_provider(provider)
    add_export_handler(handler)
    _log_handlers.append(handler)
    _state["logger"] = provider


def build_resource(*, service_name: str, service_version: str, environment: str) -> Resource:
    """Our defaults, overridden by `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`."""
    defaults = Resource.create(
        {
            SERVICE_NAME: service_name,
            SERVICE_VERSION: service_version,
            DEPLOYMENT_ENVIRONMENT_NAME: environment,
            # One id per process: gunicorn workers of one pod are told apart in traces.
            SERVICE_INSTANCE_ID: str(uuid.uuid4()),
        }
    )
    return defaults.merge(OTELResourceDetector().detect())


def configure_telemetry(
    *,
    service_name: str,
    service_version: str,
    environment: str,
    span_processors: tuple[SpanProcessor, ...] = (),
    metric_readers: tuple[MetricReader, ...] = (),
) -> None:
    """Install the SDK's provider of each signal that has somewhere to go (once per process):
    an OTLP endpoint, or a processor or reader given here (tests pass in-memory ones). A
    signal with neither keeps the API's no-op provider, and its per-request work is skipped
    (`tracing_enabled`, `metrics_enabled`). SQL and outgoing HTTP calls are traced by
    `meshkit.instrumentation`, hooked in by `Database` and `create_http_client`."""
    # New, stable semantic conventions for HTTP and database spans and metrics.
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "http,database")
    check_telemetry_environment()
    if _state or _truthy("OTEL_SDK_DISABLED"):
        return
    resource = build_resource(
        service_name=service_name, service_version=service_version, environment=environment
    )
    processors: list[SpanProcessor] = list(span_processors)
    if _exports("traces"):
        processors.insert(0, BatchSpanProcessor(_span_exporter()))
    if processors:
        # The sampler comes from OTEL_TRACES_SAMPLER (default: parentbased_always_on).
        tracer_provider = TracerProvider(resource=resource)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
        trace.set_tracer_provider(tracer_provider)
        _state["tracer"] = tracer_provider

    readers = list(metric_readers)
    if _exports("metrics"):
        readers.append(PeriodicExportingMetricReader(_metric_exporter()))
    if readers:
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics.set_meter_provider(meter_provider)
        _state["meter"] = meter_provider
    # Nothing is added to logging unless logs are exported: not a filter, not a handler.
    if _exports("logs"):
        _export_logs(resource)


def sdk_disabled() -> bool:
    """`OTEL_SDK_DISABLED` is set: no telemetry work at all, not even carrying the trace
    context on (read at each call: tests switch it per test)."""
    return _truthy("OTEL_SDK_DISABLED")


def tracing_enabled() -> bool:
    """True while this process records spans: `configure_telemetry` installed a tracer
    provider and the SDK is not disabled."""
    return "tracer" in _state and not sdk_disabled()


def metrics_enabled() -> bool:
    """True while this process records measurements, as `tracing_enabled` for spans."""
    return "meter" in _state and not sdk_disabled()


def sampled_out(parent: Context) -> bool:
    """True when `parent` holds a caller's span that was not sampled and this process's sampler
    follows the caller's decision (ParentBased: the default, and every `parentbased_*`
    sampler): a span started under it would record nothing. Callers then hand on the
    caller's context as it came instead of starting that span, sparing the span id, the
    sampler's call and the attributes (docs/benchmarks.md, "What tracing costs")."""
    caller = trace.get_current_span(parent).get_span_context()
    if not caller.is_valid or caller.trace_flags.sampled:
        return False
    provider = _state.get("tracer")
    return isinstance(provider, TracerProvider) and isinstance(provider.sampler, ParentBased)


def shutdown_telemetry() -> None:
    """Flush and stop exporters; safe to call more than once."""
    # Records logged from here on are printed only: the bridge would drop them, and say so.
    while _log_handlers:
        remove_export_handler(_log_handlers.pop())
    for key in ("logger", "tracer", "meter"):
        provider = _state.pop(key, None)
        if provider is None:
            continue
        try:
            provider.shutdown()
        except Exception:  # pragma: no cover - exporter failures must not block a stop
            logger.exception("telemetry shutdown failed")


@contextmanager
def untraced() -> Iterator[None]:
    """Run probes and housekeeping without spans, so they never show up as orphan traces."""
    with suppress_instrumentation():
        yield
