"""The server span, request ids, trace ids and one access-log line per request, as one lean
pure-ASGI middleware."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence

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
    # Tracing disabled: still answer with the caller's trace id, or a fresh one, so support
    # requests can always quote one.
    match = _TRACEPARENT.match(_header(scope, b"traceparent") or "")
    return match.group(1) if match else _random_id()


class RequestContextMiddleware:
    """Serves each request in its server span (`ServerTelemetry`; none for the probes, or with
    tracing off), adds `X-Request-ID` and `X-Trace-Id` (and `default_headers` the app did not
    set itself) to every answer, logs each request, and turns crashes into problems — in one
    wrapper of `send`, the only one a request passes through."""

    def __init__(
        self, app: ASGIApp, *, default_headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        self.app = app
        self.default_headers = tuple(default_headers)
        # `serve(scope, receive, send, route=…, span_attributes=…)`: `handle` in its server span.
        self.serve = ServerTelemetry(self.handle)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["path"] in PROBE_PATHS:
            await self.handle(scope, receive, send)  # probes make no span and no measurement
        else:
            await self.serve(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Serves one HTTP or WebSocket request; returns the status answered (0 if none)."""
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else _random_id()
        token = request_id_var.set(request_id)
        trace_id = _trace_id(scope)
        trace_token = trace_id_var.set(trace_id)
        ids = ((b"x-request-id", request_id.encode()), (b"x-trace-id", trace_id.encode()))
        defaults = self.default_headers
        started = time.perf_counter()
        status_code = 0

        async def send_with_ids(message: Message) -> None:
            nonlocal status_code
            if message["type"] in ("http.response.start", "websocket.accept"):
                status_code = message.get("status", 101)
                # Ours replace the app's ids; the defaults yield to what the app set. (ASGI
                # header names are lower case.)
                app_headers = [
                    (name, value)
                    for name, value in message.get("headers", ())  # optional on accept
                    if name not in _ID_HEADERS
                ]
                if defaults:
                    present = {name for name, _ in app_headers}
                    app_headers.extend(h for h in defaults if h[0] not in present)
                app_headers.extend(ids)
                message["headers"] = app_headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        except Exception as exc:
            if normal_close(exc):
                raise  # the client closed, as WebSocket clients do: not an error
            span = trace.get_current_span()
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            error_logger.exception("unhandled error on %s", redact(scope.get("path", "")))
            if status_code or scope["type"] != "http":
                raise
            response = problem_response(
                Request(scope),
                status=500,
                detail="An unexpected error occurred; it has been logged.",
            )
            await response(scope, receive, send_with_ids)
        finally:
            self._log(scope, status_code, started)
            request_id_var.reset(token)
            trace_id_var.reset(trace_token)
        return status_code

    @staticmethod
    def _log(scope: Scope, status_code: int, started: float) -> None:
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
            status_code,
            extra={
                "http_status": status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": client[0] if client else None,
            },
        )
