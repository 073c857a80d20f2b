"""Request ids, trace ids and one access-log line per request, as a lean pure-ASGI middleware."""

from __future__ import annotations

import logging
import re
import secrets
import time

from opentelemetry import trace
from opentelemetry.trace import StatusCode
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meshkit.health import PROBE_PATHS
from meshkit.logging import redact, request_id_var, trace_id_var
from meshkit.problems import problem_response

access_logger = logging.getLogger("meshkit.access")
error_logger = logging.getLogger("meshkit.errors")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


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
    return match.group(1) if match else secrets.token_hex(16)


class RequestContextMiddleware:
    """Adds `X-Request-ID` and `X-Trace-Id`, logs each request, and turns crashes into problems."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = (
            incoming if incoming and _SAFE_REQUEST_ID.match(incoming) else secrets.token_hex(16)
        )
        token = request_id_var.set(request_id)
        trace_id = _trace_id(scope)
        trace_token = trace_id_var.set(trace_id)
        started = time.perf_counter()
        status_code = 0

        async def send_with_ids(message: Message) -> None:
            nonlocal status_code
            if message["type"] in ("http.response.start", "websocket.accept"):
                status_code = message.get("status", 101)
                message.setdefault("headers", [])  # optional on websocket.accept
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                headers["X-Trace-Id"] = trace_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        except Exception as exc:
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
