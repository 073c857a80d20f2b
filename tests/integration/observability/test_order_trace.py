"""The test the README points SREs to: one order is one trace, from the gateway to the stored
notification, across HTTP, PostgreSQL and RabbitMQ — asserted from the exported spans alone."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

import httpx
import yaml

from meshdev.api import PASSWORD
from meshdev.otlp import OtlpReceiver, ReceivedSpan
from meshdev.waterfall import outline, render_svg

ROOT = Path(__file__).resolve().parents[3]
DOCS = ROOT / "docs" / "traces"
ARTIFACTS = ROOT / ".test-artifacts"
SERVICES = {"gateway", "users", "orders", "notifications"}


def _trace(otlp: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    return [span for span in otlp.spans if span.trace_id == trace_id]


def _is_db(span: ReceivedSpan) -> bool:
    return span.kind == "CLIENT" and span.attributes.get("db.system.name") == "postgresql"


def _is_messaging(span: ReceivedSpan, kind: str) -> bool:
    return span.kind == kind and span.attributes.get("messaging.system") == "rabbitmq"


def _descendants(spans: list[ReceivedSpan], root: ReceivedSpan) -> list[ReceivedSpan]:
    children: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        children.setdefault(span.parent_span_id, []).append(span)
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop().span_id, []):
            found.append(child)
            pending.append(child)
    return found


def _pushed_to_live_streams(spans: list[ReceivedSpan]) -> bool:
    """notification.created processed by an API process's own queue (SSE/WebSocket push)."""
    return any(
        _is_messaging(s, "CONSUMER")
        and str(s.attributes.get("messaging.destination.subscription.name", "")).startswith("amq_")
        for s in spans
    )


def _orphans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    span_ids = {span.span_id for span in spans}
    return [s for s in spans if s.parent_span_id and s.parent_span_id not in span_ids]


def _notification_stored(spans: list[ReceivedSpan]) -> bool:
    """The consumer's process span in notifications, with the notification's INSERT below it."""
    return any(
        _is_db(db) and db.service == "notifications" and "INSERT" in db.name
        for consumer in spans
        if _is_messaging(consumer, "CONSUMER") and consumer.service == "notifications"
        for db in _descendants(spans, consumer)
    )


async def _customer_token(gateway: httpx.AsyncClient) -> str:
    email = f"trace-{uuid.uuid4().hex[:12]}@example.com"
    registered = await gateway.post(
        "/api/users", json={"email": email, "password": PASSWORD, "name": "Trace"}
    )
    assert registered.status_code == 201, registered.text
    login = await gateway.post("/api/auth/token", data={"username": email, "password": PASSWORD})
    token: str = login.json()["access_token"]
    return token


async def test_an_order_is_one_connected_trace_across_the_mesh(
    gateway: httpx.AsyncClient, otlp: OtlpReceiver
) -> None:
    token = await _customer_token(gateway)

    created = await gateway.post(
        "/api/orders",
        json={"items": [{"sku": "book-1", "quantity": 2, "unit_price_cents": 1250}]},
        headers={"Authorization": f"Bearer {token}"},
    )

    assert created.status_code == 201
    trace_id = created.headers["x-trace-id"]

    def complete() -> bool:
        # Each process exports on its own schedule: wait until the story is whole.
        spans = _trace(otlp, trace_id)
        return (
            {s.service for s in spans} == SERVICES
            and _notification_stored(spans)
            and _pushed_to_live_streams(spans)
            and not _orphans(spans)
        )

    await otlp.wait_for(complete, within=20, what="the order's whole trace")
    spans = _trace(otlp, trace_id)

    assert {span.service for span in spans} == SERVICES
    (root,) = [span for span in spans if not span.parent_span_id]
    assert (root.service, root.kind) == ("gateway", "SERVER")
    assert _orphans(spans) == [], "every parent of the trace is in the trace"

    server_spans = {(s.service, s.name) for s in spans if s.kind == "SERVER"}
    assert ("orders", "POST /api/orders") in server_spans
    assert ("users", "GET /internal/users/{user_id}") in server_spans
    client_spans = [s for s in spans if s.kind == "CLIENT" and not _is_db(s)]
    assert {s.service for s in client_spans} >= {"gateway", "orders"}  # HTTP to orders, to users
    assert any(_is_db(s) and s.service == "orders" for s in spans)

    (publish,) = [s for s in spans if _is_messaging(s, "PRODUCER") and s.service == "orders"]
    assert publish.attributes["messaging.destination.name"] == "mesh.events"
    assert publish.attributes["messaging.message.id"]
    consumers = [s for s in spans if _is_messaging(s, "CONSUMER") and s.service == "notifications"]
    assert any(s.parent_span_id == publish.span_id for s in consumers), "publish → process"
    assert all(span.status_code != 2 for span in spans), "no span ended in error"

    _keep_the_picture_true(spans)


async def test_every_request_is_a_trace_of_its_own(
    gateway: httpx.AsyncClient, otlp: OtlpReceiver
) -> None:
    email = f"trace-{uuid.uuid4().hex[:12]}@example.com"
    registered = await gateway.post(
        "/api/users", json={"email": email, "password": PASSWORD, "name": "Trace"}
    )
    login = await gateway.post("/api/auth/token", data={"username": email, "password": PASSWORD})

    assert registered.headers["x-trace-id"] != login.headers["x-trace-id"]
    # The registration's trace goes on through the outbox to the user.registered notification.
    await otlp.wait_for(
        lambda: _notification_stored(_trace(otlp, registered.headers["x-trace-id"])),
        within=20,
        what="the user.registered notification in the registration's trace",
    )
    await otlp.wait_for(
        lambda: (
            {s.service for s in _trace(otlp, login.headers["x-trace-id"])} == {"gateway", "users"}
        ),
        what="the login's trace: the gateway and users only",
    )


async def test_probes_make_no_spans(gateway: httpx.AsyncClient, otlp: OtlpReceiver) -> None:
    probe = await gateway.get("/readyz")
    marker = await gateway.get("/api/auth/jwks.json")  # a traced request sent after the probe

    await otlp.wait_for(
        lambda: bool(_trace(otlp, marker.headers["x-trace-id"])), what="the marker's spans"
    )
    assert _trace(otlp, probe.headers["x-trace-id"]) == []
    assert not [s for s in otlp.spans if s.name.endswith(("/healthz", "/readyz"))]


async def test_metrics_of_every_listed_instrument_arrive_with_values(
    gateway: httpx.AsyncClient, otlp: OtlpReceiver
) -> None:
    """Everything the Grafana dashboard may query (deploy/observability/metrics.yaml)."""
    listed = yaml.safe_load((ROOT / "deploy/observability/metrics.yaml").read_text())["metrics"]
    instruments = {m["name"] for m in listed if m["name"]}
    gauges = {m["name"] for m in listed if m["type"] == "gauge"}  # zero is a fine value
    await _customer_token(gateway)  # at least one request, event and DB use after start
    # And one refusal: more headers than a server takes (`resource_limit.refusals`).
    crowded = await gateway.get("/healthz", headers={f"x-filler-{n}": "1" for n in range(120)})
    assert crowded.status_code == 431

    def arrived() -> set[str]:
        return {p.metric for p in otlp.points if p.value > 0 or p.metric in gauges} & instruments

    await otlp.wait_for(lambda: arrived() == instruments, within=20, what="every listed metric")
    http_services = {p.service for p in otlp.points if p.metric == "http.server.request.duration"}
    assert http_services == SERVICES


def _story(spans: list[ReceivedSpan]) -> list[str]:
    """The stable skeleton of a trace: which service served, published and processed what.
    Client and database spans vary with pool and cache state (a first connection, a JWKS fetch),
    so they are in the picture but not in the comparison."""
    lines = {
        re.sub(r"amq_[0-9a-f]{32}", "amq_<one queue per process>", line.strip())
        for line in outline(spans)
        if line.strip().split(" ", 2)[1] in ("SERVER", "PRODUCER", "CONSUMER")
        and "jwks.json" not in line
    }
    return sorted(lines)


def _keep_the_picture_true(spans: list[ReceivedSpan]) -> None:
    """The README's annotated trace picture is generated from these spans; its span list is
    compared on every run, so a renamed or vanished span shows up here, not in a stale doc."""
    ARTIFACTS.mkdir(exist_ok=True)
    svg = render_svg(spans, title="POST /api/orders — one trace through the mesh")
    (ARTIFACTS / "order-trace.svg").write_text(svg)
    current = _story(spans)
    documented = DOCS / "order-trace.spans.txt"
    if os.environ.get("UPDATE_TRACE_DOCS") == "1" or not documented.exists():
        DOCS.mkdir(parents=True, exist_ok=True)
        (DOCS / "order-trace.svg").write_text(svg)
        documented.write_text("\n".join(current) + "\n")
    assert current == documented.read_text().splitlines(), (
        "the order trace changed shape: run `UPDATE_TRACE_DOCS=1 make test`, review "
        "docs/traces/order-trace.svg and commit it"
    )
