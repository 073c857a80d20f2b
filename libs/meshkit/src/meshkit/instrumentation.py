"""Spans and metrics for what every request is and does: the request a process serves, its SQL
statements and its outgoing HTTP calls.

A traced request pays about the same here as with FastAPI's native telemetry and the contrib
packages (opentelemetry-instrumentation-sqlalchemy and -httpx): the cost is the span. A request
that the sampler dropped does not: those still build the span's attributes, start non-recording
spans, parse the `Host` header, wrap `send` and `receive` once more, count the request in and
out of `http.server.active_requests` and record four pool-usage measurements per checkout
(docs/benchmarks.md, "What tracing costs"). These make the same spans (stable semantic
conventions) with attributes built only for a span that records, nothing at all below a span
that does not (only `traceparent` passes the decision on), one duration measurement per
request, and read the pool's usage and limit when metrics are collected.
"""

from __future__ import annotations

import functools
import random
import re
import time
import weakref
from collections.abc import Iterable, Mapping
from contextvars import Token
from typing import Any

import httpx
from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.instrumentation.utils import (
    is_http_instrumentation_enabled,
    is_instrumentation_enabled,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv._incubating.attributes.db_attributes import (
    DB_CLIENT_CONNECTION_POOL_NAME,
    DB_CLIENT_CONNECTION_STATE,
    DbClientConnectionStateValues,
)
from opentelemetry.semconv._incubating.metrics.db_metrics import (
    DB_CLIENT_CONNECTION_COUNT,
    DB_CLIENT_CONNECTION_MAX,
)
from opentelemetry.semconv.attributes.client_attributes import CLIENT_ADDRESS
from opentelemetry.semconv.attributes.db_attributes import (
    DB_NAMESPACE,
    DB_OPERATION_NAME,
    DB_QUERY_TEXT,
    DB_RESPONSE_STATUS_CODE,
    DB_SYSTEM_NAME,
    DbSystemNameValues,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.http_attributes import (
    HTTP_REQUEST_METHOD,
    HTTP_REQUEST_METHOD_ORIGINAL,
    HTTP_RESPONSE_STATUS_CODE,
    HTTP_ROUTE,
    HttpRequestMethodValues,
)
from opentelemetry.semconv.attributes.network_attributes import (
    NETWORK_PROTOCOL_NAME,
    NETWORK_PROTOCOL_VERSION,
)
from opentelemetry.semconv.attributes.server_attributes import SERVER_ADDRESS, SERVER_PORT
from opentelemetry.semconv.attributes.url_attributes import (
    URL_FULL,
    URL_PATH,
    URL_QUERY,
    URL_SCHEME,
)
from opentelemetry.semconv.metrics.http_metrics import (
    HTTP_CLIENT_REQUEST_DURATION,
    HTTP_SERVER_REQUEST_DURATION,
)
from opentelemetry.trace import (
    INVALID_SPAN,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
)
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import ExceptionContext
from starlette.types import Scope
from starlette.websockets import WebSocketDisconnect

from meshkit.logging import redact
from meshkit.telemetry import metrics_enabled, sampled_out, sdk_disabled, tracing_enabled

# The semantic conventions' recommended boundaries for HTTP request durations (seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def http_duration(scope: str, name: str, description: str) -> metrics.Histogram:
    """The request duration histogram `name` (server or client), in seconds with the semantic
    conventions' buckets, on the meter named `scope`."""
    return metrics.get_meter(scope).create_histogram(
        name,
        unit="s",
        description=description,
        explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
    )


# Any other method is "_OTHER" in spans and metrics (semantic conventions): a client choosing
# methods must not choose the metric's series.
_KNOWN_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "QUERY", "TRACE"}
)
_OTHER_METHOD = HttpRequestMethodValues.OTHER.value
_PROPAGATED_HEADERS = frozenset({b"traceparent", b"tracestate", b"baggage"})


def normal_close(exc: BaseException) -> bool:
    """A WebSocket client that closed normally (1000) or went away (1001): no error."""
    return isinstance(exc, WebSocketDisconnect) and exc.code in (1000, 1001)


def _route_template(scope: Scope) -> str | None:
    """The matched route's path template (`/api/users/{user_id}`), once the app has routed.
    Services include their routers without a prefix of the inclusion (the prefix is the
    router's own), so the route's template is the whole path's."""
    return getattr(scope.get("route"), "path_format", None)


class ServerTelemetry:
    """Each request's SERVER span while this process traces, and its
    `http.server.request.duration` while it measures (WebSocket sessions: the span only),
    from `start` to `ServerSpan.end`. With neither, only the trace context is carried on;
    with the SDK disabled, not even that.

    The span continues the caller's trace (`traceparent`); when the caller's trace is not
    sampled, none is started and the caller's context is current. Its attributes are built
    only when it records; its name and `http.route` are the route given (the gateway knows it
    before forwarding) or the template the app matched."""

    def __init__(self) -> None:
        self._tracer = trace.get_tracer("meshkit.server")
        self._duration = http_duration(
            "meshkit.server", HTTP_SERVER_REQUEST_DURATION, "Duration of HTTP server requests."
        )

    def start(
        self,
        scope: Scope,
        route: str | None = None,
        span_attributes: Mapping[str, str] | None = None,
    ) -> ServerSpan | _CarriedContext | None:
        """The request's span, current until `end`; without tracing, the caller's trace context
        (or a new one) is current instead (`_carried_context`); with the SDK disabled, nothing
        (None). `route` names the request when the caller knows it before the app has
        routed; `span_attributes` go on the span when it records."""
        tracing = tracing_enabled()
        measuring = metrics_enabled()
        if not (tracing or measuring):
            return None if sdk_disabled() else _CarriedContext(scope)
        is_http = scope["type"] == "http"
        method = scope["method"] if is_http else "WS"
        if method not in _KNOWN_METHODS and is_http:
            method = _OTHER_METHOD
        started = time.perf_counter()
        span: trace.Span = INVALID_SPAN
        if not tracing:
            token = otel_context.attach(_carried_context(scope))
        else:
            carrier = _carrier(scope)
            parent = propagate.extract(carrier) if carrier else None
            if parent is not None and sampled_out(parent):
                span = trace.get_current_span(parent)  # the caller's, current as it came
            else:
                span = self._tracer.start_span(
                    f"{method} {route}" if route else method, context=parent, kind=SpanKind.SERVER
                )
            token = otel_context.attach(trace.set_span_in_context(span))
        recording = span.is_recording()
        if recording:
            span.set_attributes(_request_attributes(scope, method))
            if span_attributes:
                span.set_attributes(span_attributes)
        duration = self._duration if is_http and measuring else None
        return ServerSpan(span, token, duration, method, route, started)


def _carrier(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in _PROPAGATED_HEADERS
    }


def _carried_context(scope: Scope) -> otel_context.Context:
    """The caller's trace context, or a new one (as a root span would start it): what a
    process that does not trace keeps current, so its log lines and the calls and events the
    request causes carry one trace id across the mesh, at the cost of no span."""
    carrier = _carrier(scope)
    if carrier:
        context = propagate.extract(carrier)
        if trace.get_current_span(context).get_span_context().is_valid:
            return context
    new = SpanContext(
        trace_id=random.getrandbits(128) or 1,
        span_id=random.getrandbits(64) or 1,
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(new))


class _CarriedContext:
    """A request's trace context, current from `ServerTelemetry.start` to `end`, in a process
    that neither traces nor measures."""

    __slots__ = ("_token",)

    def __init__(self, scope: Scope) -> None:
        self._token = otel_context.attach(_carried_context(scope))

    def end(self, scope: Scope, status: int, raised: BaseException | None) -> None:
        otel_context.detach(self._token)


class ServerSpan:
    """One request's span and duration, from `ServerTelemetry.start` to `end`."""

    __slots__ = ("_duration", "_method", "_route", "_span", "_started", "_token")

    def __init__(
        self,
        span: trace.Span,
        token: Token[otel_context.Context],
        duration: metrics.Histogram | None,
        method: str,
        route: str | None,
        started: float,
    ) -> None:
        self._span = span
        self._token = token  # the context to restore
        self._duration = duration
        self._method = method
        self._route = route
        self._started = started

    def end(self, scope: Scope, status: int, raised: BaseException | None) -> None:
        """Completes the span and the measurement with the status answered (0 if none) and
        what the request raised (None if nothing), then ends the span."""
        span = self._span
        try:
            method = self._method
            route = self._route or _route_template(scope)
            error: str | None = None
            if raised is not None and not normal_close(raised):
                error = type(raised).__qualname__
            elif scope["type"] == "http" and (status >= 500 or not status):
                error = str(status or "incomplete")
            if span.is_recording():
                if route:
                    span.update_name(f"{method} {route}")
                    span.set_attribute(HTTP_ROUTE, route)
                if status:
                    span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
                if error is not None:
                    span.set_attribute(ERROR_TYPE, error)
                    span.set_status(StatusCode.ERROR)
            if self._duration is not None:
                # While the span is current: a kept trace becomes the measurement's exemplar.
                attributes: dict[str, str | int] = {
                    HTTP_REQUEST_METHOD: method,
                    URL_SCHEME: scope.get("scheme", "http"),
                }
                if route:
                    attributes[HTTP_ROUTE] = route
                if status:
                    attributes[HTTP_RESPONSE_STATUS_CODE] = status
                if error is not None:
                    attributes[ERROR_TYPE] = error
                self._duration.record(time.perf_counter() - self._started, attributes)
        finally:
            otel_context.detach(self._token)
            span.end()


def _request_attributes(scope: Scope, method: str) -> dict[str, str]:
    """What a recorded server span says of its request (the query without credentials)."""
    client = scope.get("client")
    attributes = {
        URL_PATH: scope["path"],
        URL_SCHEME: scope.get("scheme", "http"),
        NETWORK_PROTOCOL_VERSION: scope.get("http_version", "1.1"),
        CLIENT_ADDRESS: client[0] if client else "",
    }
    if scope["type"] == "http":
        attributes[HTTP_REQUEST_METHOD] = method
        if method == _OTHER_METHOD:
            attributes[HTTP_REQUEST_METHOD_ORIGINAL] = scope["method"]
    else:
        attributes[NETWORK_PROTOCOL_NAME] = "websocket"
    query = scope.get("query_string", b"")
    if query:
        attributes[URL_QUERY] = redact(query.decode("latin-1"))
    return attributes


_SPAN_KEY = "_meshkit_span"


class _StatementTracer:
    """A CLIENT span per statement, from SQLAlchemy's cursor events."""

    def __init__(self, engine: Engine) -> None:
        url = engine.url
        self._tracer = trace.get_tracer("meshkit.db")
        self._attributes: dict[str, str | int] = {
            DB_SYSTEM_NAME: DbSystemNameValues.POSTGRESQL.value,
            DB_NAMESPACE: url.database or "",
            SERVER_ADDRESS: url.host or "localhost",
            SERVER_PORT: url.port or 5432,
        }

    def before(
        self,
        connection: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if context is None or not is_instrumentation_enabled():
            return
        if not trace.get_current_span().is_recording():
            # The request was sampled out (or runs outside any span): a child would be dropped
            # too, so none is made.
            return
        # Statements are parameterised ($1, $2 …): the text carries no values.
        operation = statement_operation(statement)
        setattr(
            context,
            _SPAN_KEY,
            self._tracer.start_span(
                operation,
                kind=SpanKind.CLIENT,
                attributes={
                    **self._attributes,
                    DB_OPERATION_NAME: operation,
                    DB_QUERY_TEXT: statement,
                },
            ),
        )

    @staticmethod
    def after(
        connection: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        span = getattr(context, _SPAN_KEY, None)
        if span is not None:
            span.end()
            setattr(context, _SPAN_KEY, None)

    @staticmethod
    def failed(exception_context: ExceptionContext) -> None:
        span = getattr(exception_context.execution_context, _SPAN_KEY, None)
        if span is None:
            return
        error = exception_context.original_exception
        span.set_attribute(ERROR_TYPE, type(error).__qualname__)
        sqlstate = getattr(error, "sqlstate", None)
        if sqlstate:
            span.set_attribute(DB_RESPONSE_STATUS_CODE, str(sqlstate))
        # The message may quote row values: the type and SQLSTATE say enough.
        span.set_status(StatusCode.ERROR, type(error).__qualname__)
        span.end()
        setattr(exception_context.execution_context, _SPAN_KEY, None)


_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"})


@functools.lru_cache(maxsize=512)
def statement_operation(statement: str) -> str:
    """The operation a statement performs: its first word, or for `WITH … AS (…) INSERT …` the
    first operation after its common table expressions (the services write a change and its
    outbox row as one such statement)."""
    words = statement.split(None, 1)
    first = words[0].upper() if words else "postgresql"
    if first != "WITH":
        return first
    depth = 0
    for match in _TOKENS.finditer(statement):
        word = match.group()
        if word == "(":
            depth += 1
        elif word == ")":
            depth -= 1
        elif depth == 0 and word.upper() in _OPERATIONS:
            return word.upper()
    return first


_TOKENS = re.compile(r"[()]|[A-Za-z_]+")

_measured_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
_pool_gauges: list[object] = []  # the observable instruments, created with the first engine
_USED = DbClientConnectionStateValues.USED.value
_IDLE = DbClientConnectionStateValues.IDLE.value


def _pools() -> Iterable[tuple[str, Any]]:
    for engine in list(_measured_engines):
        pool: Any = engine.pool
        if hasattr(pool, "checkedout"):  # a pool that keeps no connections (NullPool) has none
            yield engine.url.render_as_string(hide_password=True), pool


def _pool_usage(options: CallbackOptions) -> Iterable[Observation]:
    for name, pool in _pools():
        used = {DB_CLIENT_CONNECTION_POOL_NAME: name, DB_CLIENT_CONNECTION_STATE: _USED}
        idle = {DB_CLIENT_CONNECTION_POOL_NAME: name, DB_CLIENT_CONNECTION_STATE: _IDLE}
        yield Observation(pool.checkedout(), used)
        yield Observation(pool.checkedin(), idle)


def _pool_limit(options: CallbackOptions) -> Iterable[Observation]:
    for name, pool in _pools():
        # QueuePool's size plus its overflow; SQLAlchemy keeps the overflow limit only as
        # `_max_overflow` (negative: no limit, nothing to report).
        overflow = getattr(pool, "_max_overflow", -1)
        if overflow >= 0:
            yield Observation(pool.size() + overflow, {DB_CLIENT_CONNECTION_POOL_NAME: name})


def instrument_engine(engine: Engine) -> None:
    """Once per engine: SQL spans for every statement of `engine` while this process traces,
    its pool's usage and limit as gauges while it measures."""
    if tracing_enabled():
        statements = _StatementTracer(engine)
        event.listen(engine, "before_cursor_execute", statements.before)
        event.listen(engine, "after_cursor_execute", statements.after)
        event.listen(engine, "handle_error", statements.failed)
    if not metrics_enabled():
        return
    if not _pool_gauges:
        # Read at collection time: nothing is recorded per checkout.
        meter = metrics.get_meter("meshkit.db")
        for name, callback, description in (
            (DB_CLIENT_CONNECTION_COUNT, _pool_usage, "Connections of the pool, idle or used."),
            (DB_CLIENT_CONNECTION_MAX, _pool_limit, "The pool's size plus its overflow."),
        ):
            _pool_gauges.append(
                meter.create_observable_up_down_counter(
                    name,
                    callbacks=[callback],
                    unit="{connection}",
                    description=description,
                )
            )
    _measured_engines.add(engine)


class TracedTransport(httpx.AsyncBaseTransport):
    """A CLIENT span (while tracing) and an `http.client.request.duration` measurement (while
    measuring) per request, and the span's `traceparent` on the request, around another
    transport. The span ends when the answer's headers arrive (a streamed body may go on for
    much longer)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self._inner = inner
        self._tracer = trace.get_tracer("meshkit.http_client")
        self._duration = http_duration(
            "meshkit.http_client", HTTP_CLIENT_REQUEST_DURATION, "Duration of HTTP client requests."
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not is_http_instrumentation_enabled():
            return await self._inner.handle_async_request(request)
        if not (tracing_enabled() or metrics_enabled()):
            if not sdk_disabled():
                # Nothing to record: the current trace context goes on to the callee, which
                # keeps one trace id across the mesh.
                propagate.inject(request.headers)
            return await self._inner.handle_async_request(request)
        url = request.url
        method = request.method
        attributes: dict[str, str | int] = {
            HTTP_REQUEST_METHOD: method,
            SERVER_ADDRESS: url.host,
            SERVER_PORT: url.port or (443 if url.scheme == "https" else 80),
        }
        if not trace.get_current_span().is_recording():
            # Sampled out, or outside any request: no span, but the callee learns the sampling
            # decision from `traceparent`.
            propagate.inject(request.headers)
            return await self._measured(request, attributes, None)
        with self._tracer.start_as_current_span(
            method,
            kind=SpanKind.CLIENT,
            attributes={**attributes, URL_FULL: redact(str(url))},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            propagate.inject(request.headers)
            return await self._measured(request, attributes, span)

    async def _measured(
        self,
        request: httpx.Request,
        attributes: dict[str, str | int],
        span: trace.Span | None,
    ) -> httpx.Response:
        started = time.perf_counter()
        try:
            response = await self._inner.handle_async_request(request)
        except Exception as exc:
            error = attributes[ERROR_TYPE] = type(exc).__qualname__
            if span is not None:
                span.set_attribute(ERROR_TYPE, error)
                span.set_status(StatusCode.ERROR, error)
            if metrics_enabled():
                self._duration.record(time.perf_counter() - started, attributes)
            raise
        status = response.status_code
        attributes[HTTP_RESPONSE_STATUS_CODE] = status
        if status >= 400:
            attributes[ERROR_TYPE] = str(status)
        if span is not None:
            span.set_attribute(HTTP_RESPONSE_STATUS_CODE, status)
            if status >= 400:
                span.set_attribute(ERROR_TYPE, attributes[ERROR_TYPE])
                span.set_status(StatusCode.ERROR)
        if metrics_enabled():
            self._duration.record(time.perf_counter() - started, attributes)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
