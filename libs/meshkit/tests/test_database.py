"""The engine, its autocommit connections and transactions, recovery from connections the
server dropped, database spans and keyset pagination."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from sqlalchemy import Column, DateTime, Table, Uuid, insert, select, text
from sqlalchemy import exc as sa_exc

from meshdev.postgres import ADMIN_DSN, create_database, drop_database, sqlalchemy_url
from meshdev.pytest_plugin import metric_points
from meshkit.db import Database, is_database_unavailable, new_metadata
from meshkit.instrumentation import statement_operation
from meshkit.pagination import Cursor, PageParams, build_page, newest_first
from meshkit.problems import UnprocessableError

TRACER = trace.get_tracer("tests")


metadata = new_metadata()
items = Table(
    "items",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[Database]:
    name = await create_database("meshkit_test")
    database = Database(sqlalchemy_url(name))
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
        yield database
    finally:
        await database.dispose()
        await drop_database(name)


def _item(created_at: datetime | None = None) -> dict[str, object]:
    return {"id": uuid.uuid4(), "created_at": created_at or datetime.now(UTC)}


async def _stored(database: Database, item_id: object) -> bool:
    async with database.connect() as connection:
        found = await connection.scalar(select(items.c.id).where(items.c.id == item_id))
    return found is not None


async def test_transaction_commits_on_success_and_rolls_back_on_error(database: Database) -> None:
    kept, lost = _item(), _item()
    async with database.transaction() as connection:
        await connection.execute(insert(items), kept)

    async def failing_handler() -> None:
        async with database.transaction() as connection:
            await connection.execute(insert(items), lost)
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError):
        await failing_handler()

    assert await _stored(database, kept["id"])
    assert not await _stored(database, lost["id"])


CURRENT_TRANSACTION = text("SELECT pg_current_xact_id()::text")


async def test_connect_sends_each_statement_alone_and_a_transaction_groups_them(
    database: Database,
) -> None:
    async with database.connect() as connection:
        first = await connection.scalar(CURRENT_TRANSACTION)
        second = await connection.scalar(CURRENT_TRANSACTION)
    assert first != second  # no BEGIN: each statement was its own transaction

    async with database.transaction() as connection:
        first = await connection.scalar(CURRENT_TRANSACTION)
        second = await connection.scalar(CURRENT_TRANSACTION)
    assert first == second


async def test_a_write_on_connect_commits_by_itself(database: Database) -> None:
    item = _item()
    async with database.connect() as connection:
        await connection.execute(insert(items), item)
        # Seen from another connection before this one is even returned to the pool.
        assert await _stored(database, item["id"])


async def _terminate_connections_to(database_name: str) -> int:
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        terminated: int = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database_name,
        )
        return terminated
    finally:
        await admin.close()


async def test_connections_the_server_dropped_fail_one_request_then_the_pool_recovers() -> None:
    """Without pre-ping: the first use of a dead pooled connection fails with an error answered
    503 (`is_database_unavailable`); SQLAlchemy then drops every older pooled connection, so
    the requests after it succeed."""
    name = await create_database("meshkit_test")
    database = Database(sqlalchemy_url(name), pool_size=3, max_overflow=0)
    try:

        async def hold_a_connection() -> None:
            async with database.transaction() as connection:
                await connection.execute(text("SELECT pg_sleep(0.05)"))

        await asyncio.gather(*(hold_a_connection() for _ in range(3)))  # three pooled
        assert await _terminate_connections_to(name) == 3

        async with database.connect() as connection:
            with pytest.raises(sa_exc.DBAPIError) as failed:
                await connection.execute(text("SELECT 1"))
        assert is_database_unavailable(failed.value)

        for _ in range(3):
            async with database.connect() as connection:
                assert await connection.scalar(text("SELECT 1")) == 1
    finally:
        await database.dispose()
        await drop_database(name)


async def test_statements_of_a_request_are_client_spans_below_it(
    database: Database, spans: InMemorySpanExporter
) -> None:
    with TRACER.start_as_current_span("request") as request:
        async with database.transaction() as connection:
            await connection.execute(select(items).limit(1))

    db_spans = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    select_span = next(s for s in db_spans if s.name == "SELECT")
    assert select_span.parent is not None
    assert select_span.parent.span_id == request.get_span_context().span_id
    attributes = dict(select_span.attributes or {})
    assert attributes["db.system.name"] == "postgresql"
    assert attributes["db.namespace"] == database.engine.url.database
    assert attributes["db.operation.name"] == "SELECT"
    assert str(attributes["db.query.text"]).startswith("SELECT items.id")
    assert attributes["server.port"] == database.engine.url.port
    assert "connect" not in {s.name for s in spans.get_finished_spans()}


async def test_a_failing_statement_is_an_error_span_with_its_sqlstate(
    database: Database, spans: InMemorySpanExporter
) -> None:
    with TRACER.start_as_current_span("request"), pytest.raises(sa_exc.DBAPIError):
        async with database.connect() as connection:
            await connection.execute(text("SELECT 1 / 0"))

    (failed,) = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert failed.status.status_code is StatusCode.ERROR
    assert (failed.attributes or {})["db.response.status_code"] == "22012"  # division_by_zero
    assert "error.type" in (failed.attributes or {})


async def test_statements_outside_a_sampled_request_make_no_spans(
    database: Database, spans: InMemorySpanExporter
) -> None:
    async with database.connect() as connection:  # no request at all (startup, housekeeping)
        await connection.execute(select(items).limit(1))
    sampled_out = NonRecordingSpan(
        SpanContext(trace_id=1, span_id=2, is_remote=True, trace_flags=TraceFlags(0))
    )
    with trace.use_span(sampled_out):
        async with database.connect() as connection:
            await connection.execute(select(items).limit(1))

    assert spans.get_finished_spans() == ()


async def test_pool_usage_is_a_gauge_read_when_metrics_are_collected(
    database: Database, metric_reader: InMemoryMetricReader
) -> None:
    def usage() -> dict[str, int]:
        name = database.engine.url.render_as_string(hide_password=True)
        return {
            str(p.attributes["db.client.connection.state"]): int(p.value)
            for p in metric_points(metric_reader, "db.client.connection.count")
            if p.attributes.get("db.client.connection.pool.name") == name
        }

    async with database.connect() as connection:
        await connection.execute(text("SELECT 1"))
        holding = usage()
    released = usage()

    assert holding["used"] == 1
    assert released["used"] == 0
    assert released["idle"] == holding["idle"] + 1


async def test_the_pool_limit_is_a_gauge_of_size_and_overflow(
    metric_reader: InMemoryMetricReader,
) -> None:
    """What the pool-exhaustion alert compares the used connections with (no connection is
    needed: the engine's pool knows its limits)."""
    database = Database(sqlalchemy_url(f"limits_{uuid.uuid4().hex}"), pool_size=3, max_overflow=2)
    pool_name = database.engine.url.render_as_string(hide_password=True)
    try:
        limits = [
            int(p.value)
            for p in metric_points(metric_reader, "db.client.connection.max")
            if p.attributes.get("db.client.connection.pool.name") == pool_name
        ]
    finally:
        await database.dispose()

    assert limits == [5]


async def test_readiness_ping_makes_no_spans(
    database: Database, spans: InMemorySpanExporter
) -> None:
    await database.ping()

    assert spans.get_finished_spans() == ()


async def test_pages_cover_every_row_once_even_with_equal_timestamps(database: Database) -> None:
    moment = datetime(2030, 1, 1, tzinfo=UTC)
    async with database.transaction() as connection:
        await connection.execute(
            insert(items), [_item(moment - timedelta(seconds=i // 3)) for i in range(25)]
        )  # groups of three rows share a timestamp
    seen: list[uuid.UUID] = []
    cursor: Cursor | None = None
    while True:
        params = PageParams(limit=7, cursor=cursor)
        async with database.connect() as connection:
            rows = await newest_first(
                connection,
                items,
                items.c.created_at.between(moment - timedelta(days=1), moment),
                params=params,
            )
        page = build_page(
            rows,
            params=params,
            to_item=lambda item: item.id,
        )
        seen.extend(page.items)
        if page.next_cursor is None:
            break
        cursor = Cursor.decode(page.next_cursor)

    assert len(seen) == len(set(seen)) == 25


def test_cursor_round_trips() -> None:
    cursor = Cursor(datetime(2030, 1, 1, tzinfo=UTC), uuid.uuid4())

    assert Cursor.decode(cursor.encode()) == cursor


@pytest.mark.parametrize("garbage", ["", "!!!", "eyJ0IjogMX0", "bm90IGpzb24", "e30"])
def test_malformed_cursor_is_a_422(garbage: str) -> None:
    with pytest.raises(UnprocessableError) as raised:
        Cursor.decode(garbage)

    assert raised.value.errors is not None
    assert [issue.loc for issue in raised.value.errors] == [["query", "cursor"]]


@pytest.mark.parametrize(
    ("statement", "operation"),
    [
        ("SELECT items.id FROM items", "SELECT"),
        ("insert into items (id) values ($1)", "INSERT"),
        (
            "WITH outbox_row AS (INSERT INTO outbox (id) SELECT $1) INSERT INTO orders (id) "
            "VALUES ($2)",
            "INSERT",
        ),
        ("WITH a AS (SELECT (1)), b AS (DELETE FROM x RETURNING id) UPDATE y SET z = 1", "UPDATE"),
    ],
)
def test_a_statement_span_names_the_statements_own_operation(
    statement: str, operation: str
) -> None:
    assert statement_operation(statement) == operation
