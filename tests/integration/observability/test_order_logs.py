"""Logs over OTLP: every process's log records reach the receiver with the trace they belong to,
so an SRE goes from a span to its log lines by the trace id (Grafana's trace → logs link)."""

from __future__ import annotations

import uuid

import httpx

from meshdev.api import UsersApi
from meshdev.otlp import OtlpReceiver, ReceivedLogRecord
from meshdev.processes import ACCESS_LOGGER, access_records
from meshdev.stack import RunningMesh

ORDER = {"items": [{"sku": "book-1", "quantity": 1, "unit_price_cents": 990}]}


def _records(otlp: OtlpReceiver, trace_id: str) -> list[ReceivedLogRecord]:
    return [record for record in otlp.log_records if record.trace_id == trace_id]


def _access(records: list[ReceivedLogRecord], service: str) -> list[ReceivedLogRecord]:
    return [r for r in records if r.service == service and r.scope == ACCESS_LOGGER]


async def test_an_orders_log_records_arrive_with_its_trace_id_from_every_service_it_crossed(
    gateway: httpx.AsyncClient, otlp: OtlpReceiver, traced_mesh: RunningMesh
) -> None:
    token = await UsersApi(gateway).token(f"logs-{uuid.uuid4().hex[:12]}@example.com")
    me = (await gateway.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})).json()
    request_id = f"logs-{uuid.uuid4().hex[:8]}"

    created = await gateway.post(
        "/api/orders",
        json=ORDER,
        headers={"Authorization": f"Bearer {token}", "X-Request-ID": request_id},
    )

    assert created.status_code == 201, created.text
    trace_id = created.headers["x-trace-id"]
    # The gateway answers POST /api/orders; orders serves it and asks users about the user (a
    # first order may also fetch the signing keys from users, in the same trace, and the two
    # records may come in different exports).
    user_check = f"GET /internal/users/{me['id']} 204"

    def arrived() -> bool:
        records = _records(otlp, trace_id)
        return bool(_access(records, "gateway") and _access(records, "orders")) and any(
            r.body == user_check for r in _access(records, "users")
        )

    await otlp.wait_for(arrived, what="the order's access records from the gateway, orders, users")
    records = _records(otlp, trace_id)
    (edge,) = _access(records, "gateway")
    assert edge.body == "POST /api/orders 201"
    assert (edge.severity_text, edge.severity_number) == ("INFO", 9)
    assert edge.span_id, "the record names the span it was logged in"
    assert edge.attributes["request_id"] == request_id
    assert edge.attributes["http_status"] == 201
    # Printed-only fields are the record's resource and trace context already.
    assert not {"service", "trace_id", "span_id", "color_message"} & set(edge.attributes)
    (served,) = [r for r in _access(records, "orders") if r.body == "POST /api/orders 201"]
    for record in (edge, served):
        assert record.resource["service.instance.id"]
        assert record.resource["deployment.environment.name"] == "test"

    # The JSON line on stdout stays, with the same ids.
    (printed,) = [
        line
        for line in access_records(traced_mesh.processes["gateway"].logs())
        if line["trace_id"] == trace_id
    ]
    assert (printed["request_id"], printed["message"]) == (request_id, "POST /api/orders 201")
