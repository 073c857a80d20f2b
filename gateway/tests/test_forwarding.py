"""Routing by prefix, the headers passed on, and errors answered as problems."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from meshdev.pytest_plugin import recorded


async def test_users_routes_reach_the_users_service(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/api/users/me", headers=auth)

    assert response.status_code == 200
    assert response.json()["email"].startswith("gw-")


async def test_orders_routes_reach_the_orders_upstream(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/api/orders/echo?limit=5&cursor=a%2Fb", headers=auth)

    assert response.status_code == 200
    echoed = response.json()
    assert (echoed["method"], echoed["path"], echoed["query"]) == (
        "GET",
        "/api/orders/echo",
        "limit=5&cursor=a%2Fb",
    )


@pytest.mark.parametrize(
    "path", ["/internal/secret", "/internal/users/1", "/api/ordersx", "/nothing", "/api"]
)
async def test_paths_outside_the_public_prefixes_are_404_problems(
    client: httpx.AsyncClient, auth: dict[str, str], fresh_hits: list[str], path: str
) -> None:
    response = await client.get(path, headers=auth)

    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["instance"] == path
    assert fresh_hits == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/users/../../internal/users/me",
        "/api/users/%2e%2e/%2E%2E/internal/users/me",
        "/api/users/..%2f..%2finternal/users/me",
        "/api/orders/./../../internal/secret",
        "/api/orders/..",
    ],
)
async def test_dot_segments_never_escape_a_prefix(
    gateway_url: str, auth: dict[str, str], fresh_hits: list[str], path: str
) -> None:
    # Sent raw: HTTP clients (httpx included) would remove the dot segments themselves.
    host, port = gateway_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: gateway\r\n"
        f"Authorization: {auth['Authorization']}\r\nConnection: close\r\n\r\n".encode()
    )
    answer = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()

    assert answer.startswith("HTTP/1.1 404 ")
    assert "content-type: application/problem+json" in answer.lower()
    assert fresh_hits == []


async def test_forwarded_headers_are_set_and_hop_by_hop_headers_dropped(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get(
        "/api/orders/echo",
        headers={
            **auth,
            "X-Request-ID": "req-42",
            "Connection": "keep-alive, X-Hop-Secret",
            "X-Hop-Secret": "only for the gateway",
            "Proxy-Authorization": "Basic Zm9vOmJhcg==",
            "X-Forwarded-For": "203.0.113.9",
            "TE": "trailers",
        },
    )

    received = dict(response.json()["headers"])
    assert received["x-request-id"] == "req-42"
    # The test client connects from 127.0.0.1, a proxy uvicorn trusts by default, so the
    # address it forwarded is the client's and is passed on once.
    assert received["x-forwarded-for"] == "203.0.113.9"
    assert received["x-forwarded-proto"] == "http"
    assert received["x-forwarded-host"] == client.base_url.netloc.decode()
    assert received["authorization"] == auth["Authorization"]
    assert "x-hop-secret" not in received
    assert "proxy-authorization" not in received
    assert "te" not in received
    assert response.headers["x-request-id"] == "req-42"
    # One `date` and one `server`: the gateway's, not the upstream's as well.
    assert len(response.headers.get_list("date")) == 1
    assert len(response.headers.get_list("server")) == 1


async def test_trace_context_reaches_the_upstream_under_the_gateway_span(
    client: httpx.AsyncClient, auth: dict[str, str], spans: InMemorySpanExporter
) -> None:
    response = await client.get("/api/orders/echo", headers=auth)

    trace_id = response.headers["x-trace-id"]
    traceparent = dict(response.json()["headers"])["traceparent"]
    assert traceparent.split("-")[1] == trace_id
    finished = [
        s for s in spans.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id
    ]
    server = next(s for s in finished if s.kind is SpanKind.SERVER and s.name == "GET /api/orders")
    upstream_call = next(s for s in finished if s.kind is SpanKind.CLIENT)
    assert upstream_call.parent is not None
    assert upstream_call.parent.span_id == server.context.span_id
    assert traceparent.split("-")[2] == format(upstream_call.context.span_id, "016x")


async def test_with_nowhere_to_send_a_forward_makes_no_span_and_records_nothing(
    nowhere_to_send: None,
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
    auth: dict[str, str],
    spans: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
) -> None:
    """No OTLP endpoint: neither the gateway's span nor its call's, no duration; the caller's
    trace context passes through as it came."""
    before = recorded(metric_reader, scope="meshkit")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with start_gateway() as url, httpx.AsyncClient(base_url=url, timeout=10) as client:
        response = await client.get(
            "/api/orders/echo", headers={**auth, "traceparent": traceparent}
        )

    assert response.status_code == 200
    assert dict(response.json()["headers"])["traceparent"] == traceparent
    assert response.headers["x-trace-id"] == "0af7651916cd43dd8448eb211c80319c"
    # The stand-in upstream is a plain FastAPI app with FastAPI's own telemetry: not counted.
    assert [
        s.name
        for s in spans.get_finished_spans()
        if s.instrumentation_scope is None or s.instrumentation_scope.name != "fastapi"
    ] == []
    assert recorded(metric_reader, scope="meshkit") == before


async def test_every_response_carries_ids_and_security_headers(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    for response in (
        await client.get("/api/orders/echo", headers=auth),
        await client.get("/api/orders/echo"),
        await client.get("/nothing"),
    ):
        assert response.headers["x-request-id"]
        assert len(response.headers["x-trace-id"]) == 32
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"


async def test_probes_answer(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).status_code == 200
    ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == ["notifications", "orders", "users"]


async def test_a_direct_client_address_starts_the_forwarded_chain(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/api/orders/echo", headers=auth)

    assert dict(response.json()["headers"])["x-forwarded-for"] == "127.0.0.1"
