"""Long-lived, pooled, traced clients for service-to-service calls, on httpx's API.

httpx's default transport costs several milliseconds of CPU per request under concurrency
(encode/httpx#3215); the aiohttp transport keeps httpx's API at a fraction of that cost. The
calls go straight to the transport (`ServiceClient`): httpx's requests, responses, errors and
transports, without `httpx.AsyncClient`'s layers around them.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import AiohttpResponseStream, map_aiohttp_exceptions

from meshkit.instrumentation import TracedTransport
from meshkit.retry import Retry


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


# Request extension set once the request has a connection slot of the pool.
POOLED = "meshkit.pooled"


class _PooledResponseStream(AiohttpResponseStream):
    """aiohttp's response body, giving its slot of the pool back once it is read or closed."""

    def __init__(self, aiohttp_response: aiohttp.ClientResponse, release: Callable[[], None]):
        super().__init__(aiohttp_response)
        self._release: Callable[[], None] | None = release

    def _give_back(self) -> None:
        if self._release is not None:
            self._release()
            self._release = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in super().__aiter__():
            yield chunk
        self._give_back()

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            self._give_back()


class PreciseAiohttpTransport(AiohttpTransport):
    """The aiohttp transport, sending URLs exactly as given and raising the httpx error that
    names what really went wrong.

    httpx-aiohttp hands aiohttp the URL as a string, which yarl re-normalises: `%2F` in a query
    became `/` and `%2B` became `+` (a space to the server), corrupting opaque cursors and any
    proxied URL. httpx URLs are already encoded, so they are passed on as encoded.

    The pool's bound (`max_connections`) is kept here rather than by aiohttp's connector: a
    request that waits past the pool timeout for a free slot raises `httpx.PoolTimeout`,
    where aiohttp would raise the same timeout as a server that does not accept connections
    (this client's own saturation is not the server's failure).
    """

    def __init__(self, *, max_connections: int) -> None:
        super().__init__(limits=httpx.Limits(max_connections=max_connections))
        self._slots = asyncio.Semaphore(max_connections)

    def get_client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self.limits.keepalive_expiry,
            ssl=self.ssl_context,
            limit=0,  # no limit of aiohttp's own: `_slots` bounds the requests in flight
        )
        # A proxied request keeps the caller's headers: no compression the caller did not ask
        # for, no client name of ours. And no cookie jar: one client serves every user, so a
        # jar would send the cookie one answer set with everybody's later requests.
        return aiohttp.ClientSession(
            connector=connector,
            skip_auto_headers=("Accept-Encoding", "User-Agent"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        slots = self._slots
        if slots.locked():
            try:
                async with asyncio.timeout(request.extensions.get("timeout", {}).get("pool")):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout(
                    f"all {self.limits.max_connections} connections of the pool are in use",
                    request=request,
                ) from None
        else:
            await slots.acquire()  # a free slot: taken without waiting
        # Tells a caller whose own deadline cut the call short whether it ever left the pool.
        request.extensions[POOLED] = True
        try:
            return await self._send(request, slots.release)
        except BaseException:
            slots.release()
            raise

    async def _send(self, request: httpx.Request, release: Callable[[], None]) -> httpx.Response:
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
            stream=_PooledResponseStream(response, release),
            request=request,
            extensions=extensions,
        )


class ConnectRetryTransport(httpx.AsyncBaseTransport):
    """Retries a request only when the connection could not be made, so it never reached the
    server and retrying cannot duplicate work."""

    def __init__(self, inner: httpx.AsyncBaseTransport, *, retries: int = 1) -> None:
        self._inner = inner
        self._retry = Retry(on=httpx.ConnectError, base=0.1, cap=1.0, attempts=1 + retries)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except httpx.ConnectError as exc:
            return await self._retry.after(exc, self._inner.handle_async_request, request)

    async def aclose(self) -> None:
        await self._inner.aclose()


RequestHeaders = Sequence[tuple[bytes, bytes]] | Mapping[str, str]


@functools.lru_cache(maxsize=4096)
def _parsed(url: str) -> httpx.URL:
    """httpx parses and checks a URL character by character in Python, a tenth of a call's
    CPU; most calls go to a few URLs again and again (`/api/users/me`, `/api/orders`, the
    same users checked), and URLs are immutable, so the parsed ones are kept."""
    return httpx.URL(url)


class ServiceClient:
    """One long-lived, pooled client of another service: httpx requests sent straight to
    httpx's transport API, without `httpx.AsyncClient`'s layers the mesh uses none of (URL,
    header and cookie merging, auth, redirects; a cookie jar would send one user's cookie with
    everybody's requests), which cost as much per call as the transport (docs/benchmarks.md)."""

    def __init__(
        self, transport: httpx.AsyncBaseTransport, *, base_url: str, timeout: httpx.Timeout
    ) -> None:
        self.transport = transport
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout.as_dict()

    def build_request(
        self,
        method: str,
        url: str,
        *,
        headers: RequestHeaders | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        timeout: httpx.Timeout | float | None = None,
    ) -> httpx.Request:
        """`url` is absolute, or a path (with its query) below `base_url`, already encoded."""
        if not url.startswith(("http://", "https://")):
            url = self.base_url + url
        request = httpx.Request(method, _parsed(url), headers=headers, content=content)
        request.extensions["timeout"] = (
            self._timeout if timeout is None else httpx.Timeout(timeout).as_dict()
        )
        return request

    async def send(self, request: httpx.Request) -> httpx.Response:
        """The answer as soon as its headers arrived; read its body or `aclose()` it."""
        response = await self.transport.handle_async_request(request)
        response.request = request
        return response

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: RequestHeaders | None = None,
        content: bytes | AsyncIterable[bytes] | None = None,
        timeout: httpx.Timeout | float | None = None,  # noqa: ASYNC109 - httpx's per-call timeouts
    ) -> httpx.Response:
        """The whole answer, body read and connection released."""
        response = await self.send(
            self.build_request(method, url, headers=headers, content=content, timeout=timeout)
        )
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    async def get(
        self,
        url: str,
        *,
        timeout: httpx.Timeout | float | None = None,  # noqa: ASYNC109 - as in `request`
    ) -> httpx.Response:
        return await self.request("GET", url, timeout=timeout)

    async def aclose(self) -> None:
        await self.transport.aclose()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()


def create_http_client(
    *,
    base_url: str = "",
    connect_timeout: float = 1.0,
    read_timeout: float = 5.0,
    max_connections: int = 100,
    connect_retries: int = 1,
) -> ServiceClient:
    """One client per upstream, created in a lifespan and closed with it."""
    transport = PreciseAiohttpTransport(max_connections=max_connections)
    outer: httpx.AsyncBaseTransport = (
        ConnectRetryTransport(transport, retries=connect_retries) if connect_retries else transport
    )
    # Outermost: one span and one measurement per request, however many connection attempts
    # it took; with neither, the trace context still goes on.
    outer = TracedTransport(outer)
    return ServiceClient(
        outer,
        base_url=base_url,
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout, pool=connect_timeout),
    )
