"""Timeouts, refused connections, retries and the circuit breaker, against real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import httpx
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from mesh_gateway.proxy import _RETRYABLE, _classify
from meshdev.processes import free_port


def _upstream_calls(spans: InMemorySpanExporter, port: int) -> int:
    return sum(
        1
        for span in spans.get_finished_spans()
        if span.kind is SpanKind.CLIENT and (span.attributes or {}).get("server.port") == port
    )


async def test_an_upstream_slower_than_the_read_timeout_is_504(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.get("/api/orders/slow?seconds=3", headers=auth)

    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"
    assert "orders" in response.json()["detail"]


async def test_an_upstream_slower_than_the_read_timeout_is_504_with_a_body_too(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    response = await client.post("/api/orders/slow?seconds=3", headers=auth, json={"a": 1})

    assert response.status_code == 504
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_refused_connection_is_503_with_retry_after(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]], auth: dict[str, str]
) -> None:
    async with (
        start_gateway(orders_url=f"http://127.0.0.1:{free_port()}") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.get("/api/orders/echo", headers=auth)

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["detail"] == "The orders service is unavailable."


async def test_only_idempotent_requests_are_retried_and_at_most_twice(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
    auth: dict[str, str],
    spans: InMemorySpanExporter,
) -> None:
    dead_port = free_port()
    async with (
        start_gateway(
            orders_url=f"http://127.0.0.1:{dead_port}", breaker_failure_threshold=100
        ) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        get = await http.get("/api/orders/echo", headers=auth)
        get_calls = _upstream_calls(spans, dead_port)
        post = await http.post("/api/orders/echo", headers=auth, json={"a": 1})
        post_calls = _upstream_calls(spans, dead_port) - get_calls

    assert (get.status_code, post.status_code) == (503, 503)
    assert get_calls == 3  # the first attempt and two retries
    assert post_calls == 1  # never repeated: it might have been a duplicate order


async def test_the_circuit_opens_after_repeated_failures_and_closes_after_recovery(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
    auth: dict[str, str],
    spans: InMemorySpanExporter,
    serve_stand_in: Callable[[int], AbstractAsyncContextManager[str]],
) -> None:
    port = free_port()
    async with (
        start_gateway(
            orders_url=f"http://127.0.0.1:{port}",
            breaker_failure_threshold=2,
            # Long enough that the fast-fail request below surely comes while the circuit is open.
            breaker_recovery_seconds=2.0,
            retry_attempts=0,
        ) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        failures = [await http.get("/api/orders/echo", headers=auth) for _ in range(2)]
        calls_before = _upstream_calls(spans, port)
        fast_fail = await http.get("/api/orders/echo", headers=auth)
        calls_while_open = _upstream_calls(spans, port) - calls_before

        async with serve_stand_in(port):
            await asyncio.sleep(2.1)  # the recovery time passes: the next call is a probe
            probe = await http.get("/api/orders/echo", headers=auth)
            after = await http.get("/api/orders/echo", headers=auth)

    assert [r.status_code for r in failures] == [503, 503]
    assert fast_fail.status_code == 503
    assert "paused" in fast_fail.json()["detail"]
    assert int(fast_fail.headers["retry-after"]) >= 1
    assert calls_while_open == 0
    assert (probe.status_code, after.status_code) == (200, 200)


async def test_readiness_names_the_upstream_that_is_down(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
) -> None:
    async with (
        start_gateway(notifications_url=f"http://127.0.0.1:{free_port()}") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.get("/readyz")

    assert response.status_code == 503
    assert "notifications" in response.json()["detail"]
    assert "orders" not in response.json()["detail"]


def test_an_upstream_dropping_the_connection_before_the_answer_is_a_503_to_retry() -> None:
    """A stopping upstream closes kept-alive connections; a request caught by that was never
    taken, so the client is told to retry (503), not that the answer went wrong (502/504)."""
    request = httpx.Request("POST", "http://orders.test/api/orders")
    error = httpx.WriteError("connection reset", request=request)
    failure = _classify(error, "orders")

    assert (failure.status, failure.upstream_fault) == (503, True)
    assert isinstance(error, _RETRYABLE)  # never reached it: safe to retry (if idempotent)
