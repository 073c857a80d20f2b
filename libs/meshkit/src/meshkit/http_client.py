"""Long-lived, pooled, traced httpx clients for service-to-service calls.

httpx's default transport costs several milliseconds of CPU per request under concurrency
(encode/httpx#3215); the aiohttp transport keeps httpx's API at a fraction of that cost.
"""

from __future__ import annotations

import asyncio
import random

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

from meshkit.instrumentation import TracedTransport
from meshkit.telemetry import tracing_enabled


def _precise_error(exc: httpx.TransportError, request: httpx.Request) -> httpx.TransportError:
    """httpx-aiohttp maps every aiohttp connection error to `ConnectTimeout`, so a refused
    connection looks like a timeout and a dropped keep-alive connection like a failed connect;
    callers deciding between 503, 504 and a retry need the real cause."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(cause), request=request)
    if isinstance(cause, aiohttp.ClientConnectorError):
        return httpx.ConnectError(str(cause), request=request)
    if isinstance(cause, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError(str(cause), request=request)
    if isinstance(cause, aiohttp.ClientOSError):
        # Reset or broken pipe before any answer: the server dropped the connection while the
        # request was being sent (e.g. it is stopping and closed a kept-alive connection).
        return httpx.WriteError(str(cause), request=request)
    return exc


class PreciseAiohttpTransport(AiohttpTransport):
    """The aiohttp transport, sending URLs exactly as given and raising the httpx error that
    names what really went wrong.

    httpx-aiohttp hands aiohttp the URL as a string, which yarl re-normalises: `%2F` in a query
    became `/` and `%2B` became `+` (a space to the server), corrupting opaque cursors and any
    proxied URL. httpx URLs are already encoded, so they are passed on as encoded.
    """

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        data: bytes | httpx.AsyncByteStream | None
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # type: ignore[assignment]
            request.headers.pop("transfer-encoding", None)  # aiohttp frames the body itself
        try:
            with map_aiohttp_exceptions():
                response = await self.client.request(
                    method=request.method,
                    url=yarl.URL(str(request.url), encoded=True),
                    headers=request.headers,
                    data=data,
                    allow_redirects=False,
                    auto_decompress=False,
                    compress=False,
                    timeout=aiohttp.ClientTimeout(
                        sock_connect=timeout.get("connect"),
                        sock_read=timeout.get("read"),
                        connect=timeout.get("pool"),
                    ),
                ).__aenter__()
        except httpx.TransportError as exc:
            precise = _precise_error(exc, request)
            if precise is exc:
                raise
            raise precise from exc.__cause__
        extensions: dict[str, object] = {"http_version": b"HTTP/1.1"}
        if response.reason:
            extensions["reason_phrase"] = response.reason.encode()
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=AiohttpResponseStream(response),
            request=request,
            extensions=extensions,
        )


class ConnectRetryTransport(httpx.AsyncBaseTransport):
    """Retries a request only when the connection could not be made, so it never reached the
    server and retrying cannot duplicate work; jittered so replicas do not retry in step."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, *, retries: int = 1, backoff: float = 0.05
    ) -> None:
        self._inner = inner
        self._retries = retries
        self._backoff = backoff

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(self._retries + 1):
            try:
                return await self._inner.handle_async_request(request)
            except httpx.ConnectError:
                if attempt == self._retries:
                    raise
                await asyncio.sleep(self._backoff * (attempt + 1) * random.uniform(0.5, 1.5))  # noqa: S311
        raise AssertionError("unreachable")  # pragma: no cover

    async def aclose(self) -> None:
        await self._inner.aclose()


def create_http_client(
    *,
    base_url: str = "",
    connect_timeout: float = 1.0,
    read_timeout: float = 5.0,
    max_connections: int = 100,
    connect_retries: int = 1,
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """One client per upstream, created in a lifespan and closed with it."""
    transport = PreciseAiohttpTransport(
        limits=httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
    )
    outer: httpx.AsyncBaseTransport = ConnectRetryTransport(transport, retries=connect_retries)
    if tracing_enabled():
        # Outermost: one span per request, however many connection attempts it took.
        outer = TracedTransport(outer)
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
        headers=headers,
        transport=outer,
    )
