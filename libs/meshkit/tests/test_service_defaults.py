"""What every service gets from `create_service_app`: errors, ids, health, spans."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, FastAPI
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc

from meshdev.processes import free_port
from meshdev.pytest_plugin import metric_points
from meshkit.app import create_service_app, readiness_checks
from meshkit.db import Database
from meshkit.problems import ConflictError, UnprocessableError
from meshkit.settings import ServiceSettings

router = APIRouter(prefix="/api/things")


class Thing(BaseModel):
    name: str
    size: int


@router.post("", status_code=201)
async def create_thing(thing: Thing) -> Thing:
    return thing


@router.get("/by-id/{thing_id}")
async def thing_by_id(thing_id: int) -> Thing:
    return Thing(name="x", size=thing_id)


@router.get("/conflict")
async def conflict() -> None:
    raise ConflictError("That thing already exists.")


@router.get("/unacceptable")
async def unacceptable() -> None:
    raise UnprocessableError("Not this one.", loc=("query", "which"), error_type="not_this_one")


@router.get("/crash")
async def crash() -> None:
    raise RuntimeError("SELECT secret FROM credentials WHERE password_hash = '$argon2id$'")


@router.get("/unreachable-database")
async def unreachable_database() -> None:
    # Nothing listens on this port: what a request meets while PostgreSQL restarts.
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/things")
    try:
        await database.ping()
    finally:
        await database.dispose()


@router.get("/wrong-statement")
async def wrong_statement() -> None:
    raise sa_exc.ProgrammingError("SELEC 1", {}, Exception("syntax error at or near SELEC"))


async def _broken_dependency() -> None:
    raise ConnectionError("down")


@pytest.fixture
async def app() -> AsyncIterator[FastAPI]:
    application = create_service_app(
        ServiceSettings(service_name="things", environment="test"),
        title="Things",
        routers=[router],
    )
    async with LifespanManager(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://things.test") as client:
        yield client


def _assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert {"type", "title", "status", "detail", "instance", "trace_id"} <= set(body)
    assert body["status"] == status
    assert body["trace_id"] == response.headers["x-trace-id"]
    return body


async def test_unknown_path_is_404_problem(client: httpx.AsyncClient) -> None:
    body = _assert_problem(await client.get("/nowhere"), 404)

    assert body["instance"] == "/nowhere"


async def test_wrong_method_is_405_problem(client: httpx.AsyncClient) -> None:
    _assert_problem(await client.delete("/api/things"), 405)


async def test_validation_error_is_422_problem_with_errors(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/things", json={"name": "x", "size": "huge"})

    body = _assert_problem(response, 422)
    assert body["errors"] == [
        {
            "loc": ["body", "size"],
            "msg": "Input should be a valid integer, unable to parse string as an integer",
            "type": "int_parsing",
        }
    ]
    assert "huge" not in response.text  # the rejected input is never echoed


async def test_malformed_json_is_422_problem(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/things", content=b"{not json", headers={"content-type": "application/json"}
    )

    _assert_problem(response, 422)


async def test_problem_error_keeps_its_status_and_detail(client: httpx.AsyncClient) -> None:
    body = _assert_problem(await client.get("/api/things/conflict"), 409)

    assert body["detail"] == "That thing already exists."
    assert body["title"] == "Conflict"


async def test_unprocessable_error_is_422_problem_with_its_issue(
    client: httpx.AsyncClient,
) -> None:
    body = _assert_problem(await client.get("/api/things/unacceptable"), 422)

    assert body["detail"] == "Not this one."
    assert body["errors"] == [
        {"loc": ["query", "which"], "msg": "Not this one.", "type": "not_this_one"}
    ]


async def test_unhandled_exception_is_500_problem_without_internals(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/things/crash")

    _assert_problem(response, 500)
    assert "SELECT" not in response.text
    assert "argon2" not in response.text
    assert "Traceback" not in response.text
    assert response.headers["x-request-id"]


async def test_an_unreachable_database_is_503_problem_with_retry_after(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/things/unreachable-database")

    body = _assert_problem(response, 503)
    assert response.headers["retry-after"] == "1"
    assert "database is unavailable" in str(body["detail"])


async def test_a_failing_statement_is_still_a_500_problem_without_sql(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/things/wrong-statement")

    _assert_problem(response, 500)
    assert "SELEC" not in response.text


async def test_request_id_is_echoed_when_sane_and_generated_otherwise(
    client: httpx.AsyncClient,
) -> None:
    echoed = await client.get("/healthz", headers={"X-Request-ID": "req-123"})
    replaced = await client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    generated = await client.get("/healthz")

    assert echoed.headers["x-request-id"] == "req-123"
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])


async def test_trace_id_header_is_the_requests_trace(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    response = await client.post("/api/things", json={"name": "x", "size": 1})

    (server_span,) = [s for s in spans.get_finished_spans() if s.name == "POST /api/things"]
    assert response.headers["x-trace-id"] == format(server_span.context.trace_id, "032x")


async def test_incoming_trace_context_is_continued(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = await client.get(
        "/api/things/conflict", headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    )

    assert response.headers["x-trace-id"] == trace_id


def _measured(reader: InMemoryMetricReader, route: str) -> dict[tuple[str, int], int]:
    """Requests measured in `http.server.request.duration` for `route`, by method and status."""
    return {
        (p.attributes["http.request.method"], p.attributes.get("http.response.status_code", 0)): (
            p.count
        )
        for p in metric_points(reader, "http.server.request.duration")
        if p.attributes.get("http.route") == route
    }


async def test_a_request_is_a_server_span_named_by_its_route_template(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    route = "/api/things/by-id/{thing_id}"
    before = _measured(metric_reader, route).get(("GET", 200), 0)

    response = await client.get("/api/things/by-id/7?token=s3cret&size=1")

    assert response.status_code == 200
    (span,) = spans.get_finished_spans()
    assert (span.name, span.kind) == (f"GET {route}", SpanKind.SERVER)
    attributes = dict(span.attributes or {})
    assert attributes["http.route"] == route
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.response.status_code"] == 200
    assert attributes["url.path"] == "/api/things/by-id/7"
    assert attributes["url.query"] == "token=[REDACTED]&size=1"
    assert span.status.status_code is StatusCode.UNSET
    assert _measured(metric_reader, route)[("GET", 200)] == before + 1


async def test_a_crash_is_an_error_span_and_measured_as_a_500(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    before = _measured(metric_reader, "/api/things/crash").get(("GET", 500), 0)

    assert (await client.get("/api/things/crash")).status_code == 500

    (span,) = spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "500"
    assert [event.name for event in span.events] == ["exception"]
    points = [
        p
        for p in metric_points(metric_reader, "http.server.request.duration")
        if p.attributes.get("http.route") == "/api/things/crash"
    ]
    assert {p.attributes.get("error.type") for p in points} == {"500"}
    assert _measured(metric_reader, "/api/things/crash")[("GET", 500)] == before + 1


async def test_a_sampled_out_request_is_measured_but_makes_no_span(
    client: httpx.AsyncClient, spans: InMemorySpanExporter, metric_reader: InMemoryMetricReader
) -> None:
    route = "/api/things/by-id/{thing_id}"
    before = _measured(metric_reader, route).get(("GET", 200), 0)
    trace_id = "0af7651916cd43dd8448eb211c80319c"

    response = await client.get(
        "/api/things/by-id/1", headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"}
    )

    assert response.status_code == 200
    assert response.headers["x-trace-id"] == trace_id  # the caller's trace, not recorded
    assert spans.get_finished_spans() == ()
    assert _measured(metric_reader, route)[("GET", 200)] == before + 1


async def test_an_unknown_method_is_measured_as_other(
    client: httpx.AsyncClient, metric_reader: InMemoryMetricReader
) -> None:
    before = _measured(metric_reader, "/api/things").get(("_OTHER", 405), 0)

    assert (await client.request("BREW", "/api/things")).status_code == 405

    assert _measured(metric_reader, "/api/things")[("_OTHER", 405)] == before + 1


async def test_health_is_200_and_probes_make_no_spans(
    client: httpx.AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200

    assert spans.get_finished_spans() == ()


async def test_readiness_is_503_naming_the_failing_dependency(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    readiness_checks(app)["broker"] = _broken_dependency

    response = await client.get("/readyz")

    body = _assert_problem(response, 503)
    assert "broker" in str(body["detail"])
    assert (await client.get("/healthz")).status_code == 200  # liveness ignores dependencies


async def test_openapi_documents_validation_errors_as_problems(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()

    response_422 = document["paths"]["/api/things"]["post"]["responses"]["422"]
    assert response_422["content"]["application/problem+json"]["schema"] == {
        "$ref": "#/components/schemas/Problem"
    }
    assert "HTTPValidationError" not in document["components"]["schemas"]
