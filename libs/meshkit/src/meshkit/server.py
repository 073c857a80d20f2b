"""The uvicorn worker every deployable is served by (gunicorn's `worker_class`), with bounds on
what one client may hold of a server process before any application code runs.

uvicorn's worker passes gunicorn's `keepalive` on but not its request limits, and uvicorn's
httptools protocol bounds neither the size of a request head nor the time it takes to arrive.
This worker's HTTP protocol does (414, 431, 408), and bounds the connections per client address
(429; not for peers `FORWARDED_ALLOW_IPS` trusts: behind a proxy that bound is the proxy's); its
WebSocket protocol applies `ws_max_size`. The protocol itself answers with problem+json and a
lingering close, and counts the refusal in `resource_limit.refusals`. Bounds, settings and
answers: docs/gateway.md, "Bounds on what one client holds".
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, NoReturn

import httptools
from uvicorn.middleware.proxy_headers import _TrustedHosts
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn_worker import UvicornWorker

from meshkit.resources import count_refusal

# After a refusal: how long the connection goes on reading (and dropping) what the client sends.
LINGER_SECONDS = 1.0
# How often a process looks for request heads past their deadline.
SWEEP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ServerBounds:
    request_line: int = 4094
    request_fields: int = 100
    request_field_size: int = 8190
    request_head_size: int = 32768
    header_timeout: float = 10.0
    connections_per_address: int = 128
    websocket_message_size: int = 65536

    @classmethod
    def from_environment(
        cls, cfg: Any = None, environ: Mapping[str, str] = os.environ
    ) -> ServerBounds:
        """gunicorn's request limits from its settings (its 0, "no limit", keeps the default
        bound), the other bounds from the environment."""
        defaults = cls()
        bounds: dict[str, Any] = {
            field: int(getattr(cfg, f"limit_{field}", None) or getattr(defaults, field))
            for field in ("request_line", "request_fields", "request_field_size")
        }
        for field, variable in _ENVIRONMENT.items():
            default = getattr(defaults, field)
            bounds[field] = type(default)(float(environ.get(variable, default)))
        return cls(**bounds)


# The bounds gunicorn has no setting for, by their environment variables.
_ENVIRONMENT = {
    "request_head_size": "LIMIT_REQUEST_HEAD_SIZE",
    "header_timeout": "REQUEST_HEADER_TIMEOUT",
    "connections_per_address": "MAX_CONNECTIONS_PER_ADDRESS",
    "websocket_message_size": "WS_MAX_MESSAGE_SIZE",
}


class _Connections:
    """This process's connections: per client address, and those whose request head is due."""

    def __init__(self, bounds: ServerBounds, trusted: list[str] | str) -> None:
        self.bounds = bounds
        self._trusted = _TrustedHosts(trusted)
        self._per_address: dict[str, int] = {}
        self._address_of: dict[object, str] = {}  # by transport, while counted
        self.http: set[BoundedHttpToolsProtocol] = set()
        self._sweeping = False

    def admit(self, address: str | None, transport: object) -> bool:
        limit = self.bounds.connections_per_address
        if not limit or address is None or address in self._trusted:
            return True
        held = self._per_address.get(address, 0)
        if held >= limit:
            return False
        self._per_address[address] = held + 1
        self._address_of[transport] = address
        return True

    def release(self, transport: object) -> None:
        address = self._address_of.pop(transport, None)
        if address is not None:
            held = self._per_address[address] - 1
            if held:
                self._per_address[address] = held
            else:
                del self._per_address[address]

    def watch(self, protocol: BoundedHttpToolsProtocol, loop: asyncio.AbstractEventLoop) -> None:
        self.http.add(protocol)
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(SWEEP_SECONDS, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # One timer per process rather than one per request: a request costs a clock read.
        now = loop.time()
        for protocol in list(self.http):
            protocol.check_head_deadline(now)
        if self.http:
            loop.call_later(SWEEP_SECONDS, self._sweep, loop)
        else:
            self._sweeping = False


class _RefusedError(Exception):
    """Raised in a parser callback to stop parsing a request that is refused."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with bounds on the request head and on connections."""

    client_connections: ClassVar[_Connections]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bounds = self.client_connections.bounds
        self._head_deadline: float | None = None
        self._head_bytes = 0  # received while a head is incomplete (a partial header included)
        self._fields_bytes = 0  # of the headers parsed so far
        self._refused = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        registry = self.client_connections
        registry.watch(self, self.loop)
        if not registry.admit(self.client[0] if self.client else None, transport):
            limit = self._bounds.connections_per_address
            self._refuse(
                429,
                "too_many_connections",
                f"Too many connections from your address: at most {limit} at once.",
            )
            return
        self._head_deadline = self.loop.time() + self._bounds.header_timeout

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_connections.release(self.transport)
        self.client_connections.http.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but a parser callback's refusal (answered already) is not logged and
        # answered again as an invalid request.
        if self._refused:
            return  # lingering: read and dropped
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if not self._refused:
                self.logger.warning("Invalid HTTP request received.")
                self._refuse(400, "invalid_request", "The request is not valid HTTP/1.1.")
            return
        if self._head_deadline is not None and not self._refused:
            # Still in a head after this chunk (httptools keeps a partial header in memory).
            self._head_bytes += len(data)
            if self._head_bytes > self._bounds.request_head_size:
                self._refuse(*self._head_too_large())

    def _head_too_large(self) -> tuple[int, str, str]:
        size = self._bounds.request_head_size
        return 431, "request_head_too_large", f"The request's headers exceed {size} bytes in all."

    def handle_websocket_upgrade(self) -> None:
        # The connection becomes the WebSocket protocol's, which releases its address.
        self.client_connections.http.discard(self)
        super().handle_websocket_upgrade()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_bytes = self._fields_bytes = 0
        if self._head_deadline is None:
            self._head_deadline = self.loop.time() + self._bounds.header_timeout

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        limit = self._bounds.request_line
        if len(self.url) > limit:
            self._stop(
                414, "request_line_too_long", f"The request target is longer than {limit} bytes."
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        bounds = self._bounds
        if len(name) + len(value) > bounds.request_field_size:
            size = bounds.request_field_size
            self._stop(
                431, "request_header_too_large", f"A request header is larger than {size} bytes."
            )
        if len(self.headers) >= bounds.request_fields:
            count = bounds.request_fields
            self._stop(
                431, "too_many_request_headers", f"The request has more than {count} headers."
            )
        self._fields_bytes += len(name) + len(value)
        if self._fields_bytes > bounds.request_head_size:
            self._stop(*self._head_too_large())
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_deadline = None
        super().on_headers_complete()

    def check_head_deadline(self, now: float) -> None:
        deadline = self._head_deadline
        if deadline is not None and now >= deadline and not self._refused:
            timeout = self._bounds.header_timeout
            self._refuse(
                408,
                "request_header_timeout",
                f"The request's headers did not arrive within {timeout:g} seconds.",
            )

    def _stop(self, status: int, reason: str, detail: str) -> NoReturn:
        """A refusal from a parser callback: answered, and the parser stopped."""
        self._refuse(status, reason, detail)
        raise _RefusedError

    def _refuse(self, status: int, reason: str, detail: str) -> None:
        if self._refused:
            return
        if reason != "invalid_request":
            count_refusal(reason)
        self._refused = True
        self._head_deadline = None
        self.client_connections.http.discard(self)
        transport = self.transport
        if transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A response is still being sent on this connection (the refused request was
            # pipelined behind it): the connection ends after that response instead.
            self.cycle.keep_alive = False
            return
        transport.write(_problem(status, detail, self.server_state.default_headers))
        # Lingering close: nothing more is sent; what the client still sends is read and
        # dropped for a moment, so a client still writing reads the answer, not a reset.
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, transport.close)


def _problem(status: int, detail: str, default_headers: list[tuple[bytes, bytes]]) -> bytes:
    """A whole problem+json response, with the ids every response of the mesh carries."""
    trace_id = secrets.token_hex(16)
    body = json.dumps(
        {
            "type": "about:blank",
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "instance": "",
            "trace_id": trace_id,
        }
    ).encode()
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines.extend(name + b": " + value for name, value in default_headers)
    lines.extend(
        [
            b"content-type: application/problem+json",
            b"content-length: " + str(len(body)).encode(),
            b"connection: close",
            b"x-request-id: " + secrets.token_hex(16).encode(),
            b"x-trace-id: " + trace_id.encode(),
        ]
    )
    if status == 429:
        lines.append(b"retry-after: 1")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class BoundedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, giving the connection's address slot back when it ends."""

    client_connections: ClassVar[_Connections]

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_connections.release(self.transport)
        super().connection_lost(exc)


def bounded_protocols(
    bounds: ServerBounds, trusted: list[str] | str
) -> tuple[type[BoundedHttpToolsProtocol], type[BoundedWebSocketProtocol]]:
    """The two protocol classes of one server process, sharing its connection registry."""
    registry = _Connections(bounds, trusted)

    class HttpProtocol(BoundedHttpToolsProtocol):
        client_connections = registry

    class WebSocketProtocol(BoundedWebSocketProtocol):
        client_connections = registry

    return HttpProtocol, WebSocketProtocol


class BoundedUvicornWorker(UvicornWorker):  # type: ignore[misc]  # untyped package
    """uvicorn's gunicorn worker, serving with `bounded_protocols` (module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        bounds = ServerBounds.from_environment(self.cfg)
        http, ws = bounded_protocols(bounds, self.config.forwarded_allow_ips)
        self.config.http = http
        self.config.ws = ws
        self.config.ws_max_size = bounds.websocket_message_size
