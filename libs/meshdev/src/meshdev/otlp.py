"""A tiny OTLP receiver for tests: what the services export, decoded with opentelemetry-proto.

OTLP/HTTP on `.url` (uvicorn in a background thread, on a free port) and, when asked for,
OTLP/gRPC on `.grpc_url` (grpcio's server with the collector's service definitions). Both keep
spans, metric points and log records in the same lists; `exporter_env()` points a service here.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import uvicorn
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest as LogsRequest,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest as MetricsRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest as TraceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from meshdev.processes import free_port

SPAN_KINDS = {
    0: "UNSPECIFIED",
    1: "INTERNAL",
    2: "SERVER",
    3: "CLIENT",
    4: "PRODUCER",
    5: "CONSUMER",
}


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


def _scoped(resources: Any, scopes: str, items: str) -> Iterator[tuple[dict[str, Any], Any, Any]]:
    """(resource attributes, scope, item) of every item of an export request: the same three
    levels in every signal (resource → scope → spans, metrics or log records)."""
    for resource in resources:
        attributes = _attributes(resource.resource.attributes)
        for scope in getattr(resource, scopes):
            for item in getattr(scope, items):
                yield attributes, scope, item


def _receiver(request_type: Any, store: Callable[[Any], None]) -> Callable[..., bytes]:
    """Keeps the items of a serialized export request; answers with the serialized response,
    which is empty (full success) for every signal."""

    def receive(body: bytes, context: object = None) -> bytes:
        store(request_type.FromString(body))
        return b""

    return receive


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    resource: dict[str, Any]
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    links: tuple[str, ...]  # trace ids of linked spans
    start_ns: int
    end_ns: int
    status_code: int


@dataclass(frozen=True)
class ReceivedPoint:
    service: str
    metric: str
    attributes: dict[str, Any]
    value: float  # sum/gauge value, or histogram count


@dataclass(frozen=True)
class ReceivedLogRecord:
    service: str
    resource: dict[str, Any]
    scope: str  # the instrumentation scope: the Python logger's name
    trace_id: str  # "" outside a span
    span_id: str
    severity_text: str
    severity_number: int
    body: Any
    attributes: dict[str, Any]
    time_ns: int


@dataclass
class OtlpReceiver:
    port: int = field(default_factory=free_port)
    grpc: bool = False  # also receive OTLP/gRPC, on `grpc_port`
    grpc_port: int = field(default_factory=free_port)
    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    log_records: list[ReceivedLogRecord] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def _store_spans(self, message: TraceRequest) -> None:
        for resource, _, span in _scoped(message.resource_spans, "scope_spans", "spans"):
            self.spans.append(
                ReceivedSpan(
                    service=str(resource.get("service.name")),
                    resource=resource,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    name=span.name,
                    kind=SPAN_KINDS[span.kind],
                    attributes=_attributes(span.attributes),
                    links=tuple(link.trace_id.hex() for link in span.links),
                    start_ns=span.start_time_unix_nano,
                    end_ns=span.end_time_unix_nano,
                    status_code=span.status.code,
                )
            )

    def _store_points(self, message: MetricsRequest) -> None:
        for resource, _, metric in _scoped(message.resource_metrics, "scope_metrics", "metrics"):
            service = str(resource.get("service.name"))
            kind = metric.WhichOneof("data")
            for point in getattr(metric, kind).data_points if kind else ():
                if kind in ("histogram", "exponential_histogram"):
                    value = float(point.count)
                else:
                    value = float(point.as_double or point.as_int)
                self.points.append(
                    ReceivedPoint(service, metric.name, _attributes(point.attributes), value)
                )

    def _store_log_records(self, message: LogsRequest) -> None:
        for resource, scope, record in _scoped(message.resource_logs, "scope_logs", "log_records"):
            self.log_records.append(
                ReceivedLogRecord(
                    service=str(resource.get("service.name")),
                    resource=resource,
                    scope=scope.scope.name,
                    trace_id=record.trace_id.hex(),
                    span_id=record.span_id.hex(),
                    severity_text=record.severity_text,
                    severity_number=record.severity_number,
                    body=_value(record.body),
                    attributes=_attributes(record.attributes),
                    time_ns=record.time_unix_nano,
                )
            )

    def start(self) -> OtlpReceiver:
        # Per signal: its OTLP/HTTP path, the collector's gRPC service, its request, its store.
        signals = (
            ("/v1/traces", "trace.v1.TraceService", TraceRequest, self._store_spans),
            ("/v1/metrics", "metrics.v1.MetricsService", MetricsRequest, self._store_points),
            ("/v1/logs", "logs.v1.LogsService", LogsRequest, self._store_log_records),
        )
        self._receivers = {path: _receiver(request, store) for path, _, request, store in signals}
        routes = [Route(path, self._receive_http, methods=["POST"]) for path in self._receivers]
        config = uvicorn.Config(
            Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        self._grpc_server = grpc.server(ThreadPoolExecutor(max_workers=4)) if self.grpc else None
        if self._grpc_server is not None:
            for path, service, _, _ in signals:
                name = f"opentelemetry.proto.collector.{service}"
                methods = {"Export": grpc.unary_unary_rpc_method_handler(self._receivers[path])}
                handler = grpc.method_handlers_generic_handler(name, methods)
                self._grpc_server.add_generic_rpc_handlers((handler,))
            self._grpc_server.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
            self._grpc_server.start()
        while not self._server.started:
            time.sleep(0.01)
        return self

    async def _receive_http(self, request: Request) -> Response:
        answer = self._receivers[request.url.path](await request.body())
        return Response(answer, media_type="application/x-protobuf")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(5)
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=1).wait(5)

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def wait_for(
        self, condition: Callable[[], bool], *, within: float = 15.0, what: str = "telemetry"
    ) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {what} after {within}s")
            await asyncio.sleep(0.05)

    def exporter_env(self, protocol: str = "http/protobuf") -> dict[str, str]:
        """Environment that makes a service export every signal here, quickly."""
        return {
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.grpc_url if protocol == "grpc" else self.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BLRP_SCHEDULE_DELAY": "100",
            "OTEL_METRIC_EXPORT_INTERVAL": "500",
        }
