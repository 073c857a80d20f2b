"""What the gateway's requests need, built in the lifespan (in each worker, after the fork)
and closed with it: two clients (ordinary requests, streams) and a circuit breaker per
upstream, the edge with its rate-limit counters, the stream caps with their leases (renewed in
the background), the two forwarders and the merged OpenAPI document (refreshed in the
background)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx

from mesh_gateway.breaker import CircuitBreaker
from mesh_gateway.docs import DESCRIPTION, TITLE
from mesh_gateway.edge import Edge
from mesh_gateway.openapi import MergedApiDocument
from mesh_gateway.proxy import HttpForwarder, Upstream
from mesh_gateway.ratelimit import ClientRateLimiter
from mesh_gateway.routing import RouteTable
from mesh_gateway.settings import GatewaySettings
from mesh_gateway.streams import StreamGate, UserStreamLeases
from mesh_gateway.websocket import WebSocketForwarder
from meshkit.auth import TokenVerifier
from meshkit.http_client import ServiceClient, create_http_client
from meshkit.ratelimit import SharedRateLimiter


@dataclass(frozen=True, slots=True)
class GatewayState:
    upstreams: Mapping[str, Upstream]
    http: HttpForwarder
    websocket: WebSocketForwarder
    document: MergedApiDocument


def _upstream(settings: GatewaySettings, name: str, url: str) -> Upstream:
    def client(max_connections: int) -> ServiceClient:
        return create_http_client(
            base_url=url,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            max_connections=max_connections,
            connect_retries=0,  # the forwarder retries, and only what is safe to
        )

    return Upstream(
        name=name,
        client=client(settings.upstream_max_connections),
        # As large as the process's stream cap, so an admitted stream never waits for one.
        streams=client(settings.stream_limit_per_process),
        breaker=CircuitBreaker(
            upstream=name,
            failure_threshold=settings.breaker_failure_threshold,
            recovery_seconds=settings.breaker_recovery_seconds,
        ),
    )


@asynccontextmanager
async def gateway_state(
    settings: GatewaySettings, routes: RouteTable, verifier: TokenVerifier
) -> AsyncIterator[GatewayState]:
    async with AsyncExitStack() as stack:
        rate_limiter = None
        if settings.rate_limit_enabled:
            counters = SharedRateLimiter(
                settings, name="gateway", strategy=settings.rate_limit_strategy
            )
            stack.callback(counters.close)
            rate_limiter = ClientRateLimiter(limits=settings.rate_limit, counters=counters)
        edge = Edge(
            verifier=verifier, rate_limiter=rate_limiter, body_limit=settings.body_limit_bytes
        )
        leases = None
        if settings.stream_limit_per_user:
            leases = UserStreamLeases(settings)
            stack.callback(leases.close)
            renewing = asyncio.create_task(leases.renew_forever(), name="stream-leases")
            stack.push_async_callback(_cancelled, renewing)
        streams = StreamGate(limit_per_process=settings.stream_limit_per_process, leases=leases)
        upstreams = {}
        for name, url in settings.upstream_urls().items():
            upstream = upstreams[name] = _upstream(settings, name, url)
            stack.push_async_callback(upstream.client.aclose)
            stack.push_async_callback(upstream.streams.aclose)
        document = MergedApiDocument(
            clients={name: u.client for name, u in upstreams.items()},
            prefixes={name: routes.prefixes_of(name) for name in upstreams},
            title=TITLE,
            version=settings.service_version,
            description=DESCRIPTION,
            refresh_seconds=settings.openapi_refresh_seconds,
        )
        refresher = asyncio.create_task(document.run(), name="openapi-refresh")
        stack.push_async_callback(_cancelled, refresher)
        yield GatewayState(
            upstreams=upstreams,
            http=HttpForwarder(
                edge=edge,
                streams=streams,
                retry_attempts=settings.retry_attempts,
                answer_timeout=settings.upstream_read_timeout,
                stream_timeout=httpx.Timeout(
                    settings.stream_read_timeout,
                    connect=settings.upstream_connect_timeout,
                    pool=settings.upstream_connect_timeout,
                ),
                body_timeout=settings.request_body_timeout,
            ),
            websocket=WebSocketForwarder(
                edge=edge,
                streams=streams,
                open_timeout=settings.upstream_connect_timeout + settings.upstream_read_timeout,
                messages_per_second=settings.websocket_messages_per_second,
            ),
            document=document,
        )


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
