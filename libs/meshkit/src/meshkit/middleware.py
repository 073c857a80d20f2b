"""Each request's context — the server span, request and trace ids, problems for crashes, one
access-log line — as `RequestContext`: entered by the gateway's dispatcher for what it forwards
and by the lean pure-ASGI middleware of every app for the rest."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Mapping, Sequence
from types import TracebackType

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshkit.health import PROBE_PATHS
from meshkit.instrumentation import ServerTelemetry, normal_close
from meshkit.logging import redact, request_id_var, trace_id_var
from meshkit.problems import problem_response

access_logger = logging.getLogger("meshkit.access")
error_logger = logging.getLogger("meshkit.errors")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ID_HEADERS = frozenset({b"x-request-id", b"x-trace-id"})
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def _random_id() -> str:
    """32 hex digits. Ids to find a request by, not secrets: the OpenTelemetry SDK makes its
    trace ids the same way, without the system call `secrets` makes for every id."""
    return f"{random.getrandbits(128):032x}"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _trace_id(scope: Scope) -> str:
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        return format(context.trace_id, "032x")
    # A request served without telemetry (the probes, or the SDK disabled): still answer with
    # the caller's trace id, or a fresh one, so support requests can always quote one.
    match = _TRACEPARENT.match(_header(scope, b"traceparent") or "")
    return match.group(1) if match else _random_id()


class RequestContext:
    """One HTTP request or WebSocket session, served inside `async with` by the code that
    answers it, through the `send` it yields — the one wrapper of `send` a request passes:

        async with RequestContext(scope, receive, send, telemetry) as send_with_ids:
            await app(scope, receive, send_with_ids)

    On entry: the server span (`telemetry`; None for none, as for the probes), the request id
    (the caller's `X-Request-ID` if sane) and the trace id. Every answer gets `X-Request-ID`,
    `X-Trace-Id` and the `default_headers` the app did not set itself. On exit: a crash is
    logged, and answered as a 500 problem if nothing was answered yet; one access-log line;
    the span ends."""

    __slots__ = (
        "_default_headers",
        "_ids",
        "_receive",
        "_request_id_token",
        "_route",
        "_scope",
        "_send",
        "_server_span",
        "_span_attributes",
        "_started",
        "_telemetry",
        "_trace_id_token",
        "status",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        telemetry: ServerTelemetry | None,
        default_headers: tuple[tuple[bytes, bytes], ...] = (),
        route: str | None = None,
        span_attributes: Mapping[str, str] | None = None,
    ) -> None:
        """`route` names the request when the caller knows it before the app has routed;
        `span_attributes` go on the span when it records."""
        self._scope = scope
        self._receive = receive
        self._send = send
        self._telemetry = telemetry
        self._default_headers = default_headers
        self._route = route
        self._span_attributes = span_attributes
        self.status = 0  # the status answered; 0 until then

    async def __aenter__(self) -> Send:
        scope = self._scope
        telemetry = self._telemetry
        self._server_span = (
            telemetry.start(scope, self._route, self._span_attributes) if telemetry else None
        )
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else _random_id()
        self._request_id_token = request_id_var.set(request_id)
        trace_id = _trace_id(scope)
        self._trace_id_token = trace_id_var.set(trace_id)
        self._ids = ((b"x-request-id", request_id.encode()), (b"x-trace-id", trace_id.encode()))
        self._started = time.perf_counter()
        return self.send

    async def send(self, message: Message) -> None:
        if message["type"] in ("http.response.start", "websocket.accept"):
            self.status = message.get("status", 101)
            # Ours replace the app's ids; the defaults yield to what the app set. (ASGI header
            # names are lower case.)
            app_headers = [
                (name, value)
                for name, value in message.get("headers", ())  # optional on accept
                if name not in _ID_HEADERS
            ]
            defaults = self._default_headers
            if defaults:
                present = {name for name, _ in app_headers}
                app_headers.extend(h for h in defaults if h[0] not in present)
            app_headers.extend(self._ids)
            message["headers"] = app_headers
        await self._send(message)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        """True (the crash is answered) when a problem went out in place of the exception."""
        raised = exc
        try:
            if isinstance(exc, Exception) and not normal_close(exc):
                raised = await self._crashed(exc)
        except BaseException as failure:
            raised = failure
            raise
        finally:
            self._log()
            request_id_var.reset(self._request_id_token)
            trace_id_var.reset(self._trace_id_token)
            if self._server_span is not None:
                self._server_span.end(self._scope, self.status, raised)
        return exc is not None and raised is None

    async def _crashed(self, exc: Exception) -> Exception | None:
        """Records and logs the crash, and answers it as a 500 problem if nothing was answered
        yet (None); otherwise it stays raised (returned)."""
        scope = self._scope
        span = trace.get_current_span()
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, type(exc).__name__)
        error_logger.error("unhandled error on %s", redact(scope.get("path", "")), exc_info=exc)
        if self.status or scope["type"] != "http":
            return exc
        response = problem_response(
            Request(scope),
            status=500,
            detail="An unexpected error occurred; it has been logged.",
        )
        await response(scope, self._receive, self.send)
        return None

    def _log(self) -> None:
        scope = self._scope
        path = scope.get("path", "")
        level = logging.DEBUG if path in PROBE_PATHS else logging.INFO
        if not access_logger.isEnabledFor(level):
            return
        query = scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        access_logger.log(
            level,
            "%s %s %s",
            scope.get("method", "WS"),
            redact(f"{path}?{query}" if query else path),
            self.status,
            extra={
                "http_status": self.status,
                "duration_ms": round((time.perf_counter() - self._started) * 1000, 2),
                "client": client[0] if client else None,
            },
        )


class RequestContextMiddleware:
    """Serves every HTTP request and WebSocket session of `app` in its `RequestContext`; the
    probes without a span or a measurement."""

    def __init__(
        self, app: ASGIApp, *, default_headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.app = app
        self.default_headers = tuple(default_headers)
        self.telemetry = ServerTelemetry()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        telemetry = None if scope["path"] in PROBE_PATHS else self.telemetry
        async with RequestContext(
            scope, receive, send, telemetry, self.default_headers
        ) as send_with_ids:
            await self.app(scope, receive, send_with_ids)
