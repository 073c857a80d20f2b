"""The forwarding hot path: one proxied HTTP request, as a raw ASGI handler — the transport
only; whether the request may go on is the edge's decision (`mesh_gateway.edge`).

A FastAPI catch-all route costs much of a raw ASGI handler's throughput (docs/benchmarks.md),
so forwarding bypasses FastAPI's routing, dependency injection and request objects. Request and
response bodies are streamed chunk by chunk; nothing is buffered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Literal

import httpx
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from mesh_gateway.breaker import CircuitBreaker
from mesh_gateway.edge import Admission, Edge, EdgeRequest, Refusal, bearer_token
from mesh_gateway.routing import is_stream
from mesh_gateway.streams import StreamGate, StreamTicket
from meshkit.concurrency import first_completed
from meshkit.http_client import POOLED, ServiceClient
from meshkit.logging import request_id_var
from meshkit.problems import problem_response
from meshkit.resources import count_refusal
from meshkit.retry import Retry

logger = logging.getLogger("mesh_gateway.proxy")

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# Set by the gateway itself, never trusted from the client as they are.
_REPLACED = frozenset(
    {b"host", b"x-request-id", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"}
)
# `Expect: 100-continue` was answered by the gateway's own server when the body was read.
_SKIPPED_REQUEST_HEADERS = HOP_BY_HOP | _REPLACED | {b"expect"}
# The gateway's server writes its own `date` and `server`; the upstream's would be duplicates.
_SKIPPED_RESPONSE_HEADERS = HOP_BY_HOP | {b"date", b"server"}
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# After refusing a body, how much more of it the gateway reads (and drops) so the client can
# see the 413; past that the connection is closed under it.
_LINGER_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Upstream:
    """One service behind the gateway: two long-lived pooled clients — ordinary requests and
    streams never wait for each other's connections — and its circuit breaker."""

    name: str
    client: ServiceClient
    streams: ServiceClient
    breaker: CircuitBreaker

    async def ready(self) -> None:
        """Readiness: the upstream process answers its liveness probe."""
        response = await self.client.get("/healthz", timeout=2.0)
        if response.status_code != 200:
            raise RuntimeError(f"{self.name} answered {response.status_code}")


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def request_target(scope: Scope) -> str:
    """The request's path and query exactly as the client encoded them."""
    path: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string", b"")
    target = path.decode("latin-1")
    return f"{target}?{query.decode('latin-1')}" if query else target


class _BodyStoppedError(Exception):
    """The request body broke off; `_RequestBody.stopped` says why."""


class _RequestBody:
    """The client's request body as a stream for httpx, counted against the limit as it flows,
    and due whole within the body timeout (a client trickling a body would hold an upstream
    connection of the pool for as long as it likes)."""

    def __init__(self, receive: Receive, limit: int, timeout: float) -> None:
        self._receive = receive
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout
        self.stopped: Literal["client gone", "too large", "too slow"] | None = None

    async def _next(self) -> Message:
        try:
            async with asyncio.timeout_at(self._deadline):
                return await self._receive()
        except TimeoutError:
            self.stopped = "too slow"
            raise _BodyStoppedError from None

    async def stream(self) -> AsyncIterator[bytes]:
        received = 0
        while True:
            message = await self._next()
            if message["type"] == "http.disconnect":
                self.stopped = "client gone"
                raise _BodyStoppedError
            chunk: bytes = message.get("body", b"")
            received += len(chunk)
            if received > self._limit:
                self.stopped = "too large"
                raise _BodyStoppedError
            if chunk:
                yield chunk
            if not message.get("more_body", False):
                return

    async def drain(self) -> None:
        """Read and drop what the client still sends (up to `_LINGER_BYTES`), so it is done
        writing and reads the 413 instead of failing on a connection reset mid-upload."""
        drained = 0
        while drained <= _LINGER_BYTES:
            try:
                message = await self._next()
            except _BodyStoppedError:
                return
            if message["type"] == "http.disconnect":
                return
            drained += len(message.get("body", b""))
            if not message.get("more_body", False):
                return


@dataclass(frozen=True, slots=True)
class _Failure:
    status: int
    detail: str
    upstream_fault: bool = True  # counts against the upstream's circuit breaker


# Failures of requests that never reached the upstream: retrying them cannot duplicate work.
# A WriteError: the upstream closed the connection before taking the request (it is stopping).
_RETRYABLE = (httpx.ConnectError, httpx.WriteError, httpx.ConnectTimeout)


def _classify(exc: httpx.HTTPError, upstream: str) -> _Failure:
    if isinstance(exc, httpx.ConnectError | httpx.WriteError):
        return _Failure(503, f"The {upstream} service is unavailable.")
    if isinstance(exc, httpx.ConnectTimeout):
        return _Failure(504, f"The {upstream} service did not accept a connection in time.")
    if isinstance(exc, httpx.PoolTimeout):
        # The gateway's own pool is exhausted: the upstream is not at fault.
        return _Failure(503, f"Too many requests in flight to the {upstream} service.", False)
    if isinstance(exc, httpx.TimeoutException):
        return _Failure(504, f"The {upstream} service did not answer in time.")
    return _Failure(502, f"The {upstream} service sent no valid answer.")


async def send_refusal(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    response = problem_response(
        Request(scope), status=refusal.status, detail=refusal.detail, headers=refusal.headers
    )
    response.raw_headers.extend(refusal.rate_headers)
    await response(scope, receive, send)


class HttpForwarder:
    def __init__(
        self,
        *,
        edge: Edge,
        streams: StreamGate,
        retry_attempts: int,
        answer_timeout: float,
        stream_timeout: httpx.Timeout,
        body_timeout: float,
    ) -> None:
        self._edge = edge
        self._streams = streams
        self._retry = Retry(on=_RETRYABLE, base=0.1, cap=1.0, attempts=1 + retry_attempts)
        self._answer_timeout = answer_timeout
        self._stream_timeout = stream_timeout
        self._body_timeout = body_timeout
        self._body_too_slow = Refusal(
            408,
            f"The request body did not arrive within {body_timeout:g} seconds.",
            {"Connection": "close"},
        )

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, upstream: Upstream
    ) -> None:
        method: str = scope["method"]
        authorization = content_length = accept = None
        chunked = expects_continue = False
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"content-length":
                content_length = value
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"expect":
                expects_continue = value.lower() == b"100-continue"
            elif name == b"accept":
                accept = value
        # The server has already refused a malformed Content-Length.
        declared = int(content_length) if content_length is not None else None

        admitted = await self._edge.admit(
            EdgeRequest(
                method=method,
                path=scope["path"],
                client=client_address(scope),
                token=bearer_token(authorization),
                content_length=declared,
            ),
            upstream=upstream.name,
            breaker=upstream.breaker,
        )
        if isinstance(admitted, Refusal):
            # Before a 413 for a declared size, a client still uploading must be done, or the
            # close resets the connection under it and it never reads the 413. One waiting for
            # `100 Continue` sends nothing more; one sending far more is cut off either way.
            limit = self._edge.body_limit
            if (
                admitted is self._edge.body_too_large
                and not expects_continue
                and (declared or 0) <= limit + _LINGER_BYTES
            ):
                await _RequestBody(receive, limit, self._body_timeout).drain()
            await send_refusal(scope, receive, send, admitted)
            return

        has_body = chunked or (declared is not None and declared != 0)
        if not is_stream(scope["path"], accept):
            await self._forward(scope, receive, send, upstream, admitted, has_body)
            return
        opened = await self._streams.open(admitted.client, "sse")
        if isinstance(opened, Refusal):
            await send_refusal(scope, receive, send, opened)
            return
        try:
            await self._forward(scope, receive, send, upstream, admitted, has_body, opened)
        finally:
            await self._streams.close(opened)

    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Upstream,
        admitted: Admission,
        has_body: bool,
        stream: StreamTicket | None = None,
    ) -> None:
        """The admitted request upstream and its answer back; a stream on the stream pool."""
        body = (
            _RequestBody(receive, self._edge.body_limit, self._body_timeout) if has_body else None
        )
        method: str = scope["method"]
        client = upstream.client if stream is None else upstream.streams
        # Without a body, the wait for the answer's headers is bounded on its own (`_answer`),
        # so that a started response (an event stream idling between keep-alives) may pause
        # longer than the answer may take; with a body, the read timeout bounds both.
        request = client.build_request(
            method,
            request_target(scope),
            headers=self._forward_headers(scope),
            content=body.stream() if body is not None else None,
            timeout=None if has_body else self._stream_timeout,
        )
        response = await self._answer(scope, receive, send, upstream, client, request, body)
        if response is None:
            return  # answered with a problem, or the client is gone
        upstream.breaker.record_success()
        try:
            event_stream = response.headers.get("content-type", "").startswith("text/event-stream")
            if event_stream and stream is None:
                # A stream nobody declared (`routing.STREAM_PATHS`): capped all the same.
                logger.warning(
                    "%s %s answered an event stream to a request not known as one",
                    method,
                    scope["path"],
                )
                opened = await self._streams.open(admitted.client, "sse")
                if isinstance(opened, Refusal):
                    await send_refusal(scope, receive, send, opened)
                    return
                try:
                    await self._relay(scope, receive, send, response, admitted.rate_headers, True)
                finally:
                    await self._streams.close(opened)
                return
            await self._relay(scope, receive, send, response, admitted.rate_headers, event_stream)
        finally:
            await response.aclose()

    async def _answer(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        upstream: Upstream,
        client: ServiceClient,
        request: httpx.Request,
        body: _RequestBody | None,
    ) -> httpx.Response | None:
        """The upstream's answer (headers received, body still streaming), or None once a
        problem has been sent instead."""
        answer_deadline = None if body is not None else self._answer_timeout
        error: httpx.HTTPError
        try:
            # One deadline for the answer, however many connection attempts it takes.
            async with asyncio.timeout(answer_deadline):
                try:
                    return await client.send(request)
                except _RETRYABLE as exc:
                    # Retrying is safe only when the request never reached the upstream, only
                    # for methods that may be repeated, and only without a body (a streamed
                    # body cannot be replayed).
                    if body is not None or request.method not in IDEMPOTENT_METHODS:
                        raise
                    return await self._retry.after(exc, client.send, request)
        except TimeoutError:
            if request.extensions.get(POOLED, True):
                upstream.breaker.record_failure()
                late = Refusal(504, f"The {upstream.name} service did not answer in time.")
                await send_refusal(scope, receive, send, late)
                return None
            # Cut short while still waiting for a connection of the gateway's own pool.
            error = httpx.PoolTimeout("no free connection in time", request=request)
        except httpx.HTTPError as exc:
            if body is not None and body.stopped == "client gone":
                return None  # nobody is left to answer
            if body is not None and body.stopped == "too large":
                await body.drain()
                await send_refusal(scope, receive, send, self._edge.body_too_large)
                return None
            if body is not None and body.stopped == "too slow":
                count_refusal("request_body_timeout")
                await send_refusal(scope, receive, send, self._body_too_slow)
                return None
            error = exc
        failure = _classify(error, upstream.name)
        if failure.upstream_fault:
            upstream.breaker.record_failure()
            logger.warning("%s %s: %s (%s)", request.method, upstream.name, failure.detail, error)
        else:
            count_refusal("upstream_pool_full")
            logger.warning(
                "%s %s: the gateway's own pool of connections to it is full (%s); "
                "answered 503, not counted against the upstream",
                request.method,
                upstream.name,
                error,
            )
        headers = {"Retry-After": "1"} if failure.status == 503 else {}
        await send_refusal(scope, receive, send, Refusal(failure.status, failure.detail, headers))
        return None

    async def _relay(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        response: httpx.Response,
        extra_headers: Sequence[tuple[bytes, bytes]],
        event_stream: bool,
    ) -> None:
        headers = [
            (name.lower(), value)
            for name, value in response.headers.raw
            if name.lower() not in _SKIPPED_RESPONSE_HEADERS
        ]
        headers.extend(extra_headers)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        if event_stream:
            await self._relay_until_disconnect(receive, send, response)
            return
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except httpx.HTTPError as exc:
            # The status is sent; all that is left is to cut the response short.
            logger.warning("upstream response broke off: %s", exc)
            return
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _relay_until_disconnect(
        self, receive: Receive, send: Send, response: httpx.Response
    ) -> None:
        """An event stream never ends by itself: stop reading upstream when the client leaves."""

        async def pump() -> None:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def client_left() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await first_completed(pump(), client_left())
        except* httpx.HTTPError as broken:
            for exc in broken.exceptions:
                logger.warning("event stream broke off: %s", exc)
        except* Exception:  # noqa: S110 - anything else ends the stream as a client leaving does
            pass

    @staticmethod
    def _forward_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
        raw: list[tuple[bytes, bytes]] = scope["headers"]
        skipped = _SKIPPED_REQUEST_HEADERS
        forwarded_for = host = None
        for name, value in raw:
            if name == b"connection":
                # Headers named in Connection are hop-by-hop too (RFC 9110 section 7.6.1).
                listed = {part.strip().lower() for part in value.split(b",") if part.strip()}
                skipped = skipped | listed
            elif name == b"x-forwarded-for":
                forwarded_for = value
            elif name == b"host":
                host = value
        headers = [(name, value) for name, value in raw if name not in skipped]
        address = client_address(scope).encode()
        if not forwarded_for:
            forwarded_for = address
        elif forwarded_for.rsplit(b",", 1)[-1].strip() != address:
            # Unless the server already took the client address from a trusted proxy's
            # X-Forwarded-For (uvicorn's FORWARDED_ALLOW_IPS), the peer joins the chain.
            forwarded_for += b", " + address
        headers.append((b"x-forwarded-for", forwarded_for))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        if host is not None:
            headers.append((b"x-forwarded-host", host))
        request_id = request_id_var.get()
        if request_id:
            headers.append((b"x-request-id", request_id.encode()))
        return headers
