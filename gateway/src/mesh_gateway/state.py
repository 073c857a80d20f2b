"""What the gateway's requests need, built in the lifespan (in each worker, after the fork)
and closed with it: a client and a circuit breaker per upstream, the edge with its rate-limit
counters, the two forwarders and the merged OpenAPI document (refreshed in the background)."""

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
from mesh_gateway.websocket import WebSocketForwarder
from meshkit.auth import TokenVerifier
from meshkit.http_client import create_http_client
from meshkit.ratelimit import SharedRateLimiter


@dataclass(frozen=True, slots=True)
class GatewayState:
    upstreams: Mapping[str, Upstream]
    http: HttpForwarder
    websocket: WebSocketForwarder
    document: MergedApiDocument


def _upstream(settings: GatewaySettings, name: str, url: str) -> Upstream:
    return Upstream(
        name=name,
        client=create_http_client(
            base_url=url,
            connect_timeout=settings.upstream_connect_timeout,
            read_timeout=settings.upstream_read_timeout,
            max_connections=settings.upstream_max_connections,
            connect_retries=0,  # the forwarder retries, and only what is safe to
        ),
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
            counters = SharedRateLimiter.from_settings(
                settings, name="gateway", strategy=settings.rate_limit_strategy
            )
            stack.callback(counters.close)
            rate_limiter = ClientRateLimiter(limits=settings.rate_limit, counters=counters)
        edge = Edge(
            verifier=verifier, rate_limiter=rate_limiter, body_limit=settings.body_limit_bytes
        )
        upstreams = {}
        for name, url in settings.upstream_urls().items():
            upstreams[name] = _upstream(settings, name, url)
            stack.push_async_callback(upstreams[name].client.aclose)
        document = MergedApiDocument(
            clients={name: u.client for name, u in upstreams.items()},
            prefixes={name: routes.prefixes_of(name) for name in upstreams},
            title=TITLE,
            version=settings.service_version,
            description=DESCRIPTION,
            refresh_seconds=settings.openapi_refresh_seconds,
        )
        refresher = asyncio.create_task(document.run(), name="openapi-refresh")
        try:
            yield GatewayState(
                upstreams=upstreams,
                http=HttpForwarder(
                    edge=edge,
                    retry_attempts=settings.retry_attempts,
                    answer_timeout=settings.upstream_read_timeout,
                    stream_timeout=httpx.Timeout(
                        settings.stream_read_timeout,
                        connect=settings.upstream_connect_timeout,
                        pool=settings.upstream_connect_timeout,
                    ),
                ),
                websocket=WebSocketForwarder(
                    edge=edge,
                    open_timeout=settings.upstream_connect_timeout + settings.upstream_read_timeout,
                ),
                document=document,
            )
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
