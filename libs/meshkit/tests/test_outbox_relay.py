"""The outbox relay against a real PostgreSQL and a real RabbitMQ vhost (each through a fault
proxy where a test cuts it): it claims when a unit of work of its process committed events and
polls for the rest, publishes, marks with its next claim or on its own, survives the database
going away at any of those moments, ends a broker outage's backoff at the next write, and
counts what it sent (nothing, with nowhere to send it); statements planned on an empty outbox do
not read the sent rows."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import asyncpg
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import MetaData, text
from sqlalchemy.dialects.postgresql import asyncpg as postgresql_asyncpg

from meshdev.customers import eventually
from meshdev.faults import TcpProxy
from meshdev.postgres import asyncpg_dsn, create_database, drop_database
from meshdev.pytest_plugin import metric_points, recorded
from meshdev.rabbitmq import BROKER_URL, amqp_url, create_vhost, delete_vhost
from meshkit.db import Database
from meshkit.messaging import EVENTS_EXCHANGE, CloudEvent, Outbox
from meshkit.messaging import relay as relay_module
from meshkit.messaging.broker import Broker
from meshkit.messaging.relay import OutboxRelay, RelaySettings, _RelayStatements
from meshkit.retry import Retry
from meshkit.unit_of_work import UnitOfWork

INSERT = "INSERT INTO outbox (id, event_type, event) VALUES ($1, 'test.event', $2::jsonb)"
LOGGER = "meshkit.messaging.outbox"


@pytest.fixture
async def database_name() -> AsyncIterator[str]:
    name = await create_database("meshkit_test")
    outbox = Outbox(MetaData())
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
    async with database.transaction() as connection:
        await connection.run_sync(outbox.table.metadata.create_all)
    await database.dispose()
    yield name
    await drop_database(name)


@pytest.fixture
async def vhost() -> AsyncIterator[str]:
    name = await create_vhost("meshkit_test")
    yield name
    await delete_vhost(name)


@pytest.fixture
async def broker(vhost: str) -> AsyncIterator[Broker]:
    broker = Broker(amqp_url(vhost), connection_name="relay-test")
    broker.start()
    await broker.wait_connected()
    yield broker
    await broker.close()


@pytest.fixture
async def received(broker: Broker, vhost: str) -> AsyncIterator[list[str]]:
    """The ids of the messages published to `test.#`, as a queue of the test's receives them."""
    ids: list[str] = []
    async with await aio_pika.connect(amqp_url(vhost)) as listener:
        channel = await listener.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(EVENTS_EXCHANGE, "test.#")

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            ids.append(message.message_id or "")

        await queue.consume(on_message, no_ack=True)
        yield ids


def _logged(caplog: pytest.LogCaptureFixture, level: int, start: str) -> int:
    """How many records of the relay's logger at `level` start with `start`."""
    return sum(
        1
        for r in caplog.records
        if r.name == LOGGER and r.levelno == level and r.getMessage().startswith(start)
    )


async def test_the_relay_survives_the_database_going_away_before_it_marks(
    database_name: str, broker: Broker, received: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:{proxy.port}/{database_name}")
    direct = await asyncpg.connect(asyncpg_dsn(database_name))
    # A long mark delay opens a window between the broker's confirm and the mark.
    relay = OutboxRelay(
        database=database,
        outbox=Outbox(MetaData()),
        broker=broker,
        # The backlog measured at every turn: also while the database is refused, which is
        # classified as the broker's failure if told apart by its type (ConnectionError).
        settings=RelaySettings(poll_interval=0.2, mark_delay=2.0, backlog_every=0.0),
    )
    try:
        caplog.set_level(logging.INFO, logger=LOGGER)
        relay.start()
        await asyncio.sleep(1.0)  # its first claim (on starting) is spent

        first = _event()
        await direct.execute(INSERT, first.id, first.model_dump_json())

        async def published(event_id: uuid.UUID) -> bool:
            return str(event_id) in received

        await eventually(lambda: published(first.id))
        await proxy.cut()  # before the mark
        await asyncio.sleep(2.5)  # the mark fails meanwhile
        await proxy.restore()

        second = _event()
        await direct.execute(INSERT, second.id, second.model_dump_json())
        await eventually(lambda: published(second.id))  # the relay still runs

        async def both_marked() -> bool:
            pending: int = await direct.fetchval(
                "SELECT count(*) FROM outbox WHERE sent_at IS NULL"
            )
            return pending == 0

        await eventually(both_marked)
    finally:
        await relay.stop()
        await direct.close()
        await database.dispose()
        await proxy.close()
    assert received.count(str(first.id)) == 1  # marked late, but published once
    # One warning for the outage, under the name the runbook searches for, and its end.
    assert _logged(caplog, logging.WARNING, "outbox relay: database unavailable (") == 1
    assert _logged(caplog, logging.INFO, "outbox relay: database unavailable; back after") == 1


@pytest.fixture
def long_backoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's backoffs last up to a million seconds: in a test's time, only a wake-up or a
    stop ends one."""

    def retry(**policy: Any) -> Retry:
        return Retry(**{**policy, "base": 1e6, "cap": 1e6})

    monkeypatch.setattr(relay_module, "Retry", retry)


async def test_after_a_broker_outage_the_next_write_ends_the_relays_backoff(
    long_backoffs: None,
    database_name: str,
    vhost: str,
    received: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The events written during the outage go out with the first one written after it, not
    when the backoff ends; a stop ends the backoff of the next outage at once."""
    address = urlsplit(BROKER_URL)
    link = await TcpProxy(address.hostname or "127.0.0.1", address.port or 5672).start()
    broker = Broker(amqp_url(vhost, port=link.port), connection_name="relay-test")
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database_name}")
    direct = await asyncpg.connect(asyncpg_dsn(database_name))
    outbox = Outbox(MetaData())
    settings = RelaySettings(poll_interval=0.2)
    relay = OutboxRelay(database=database, outbox=outbox, broker=broker, settings=settings)
    caplog.set_level(logging.INFO)

    async def outages(count: int) -> bool:
        return _logged(caplog, logging.WARNING, "outbox relay: broker unavailable (") == count

    async def reconnected() -> bool:
        return any(
            r.name == "meshkit.messaging.broker" and r.getMessage().startswith("reconnected")
            for r in caplog.records
        )

    async def published(*events: CloudEvent) -> bool:
        return all(str(event.id) in received for event in events)

    try:
        broker.start()
        await broker.wait_connected()
        relay.start()
        await link.cut()
        await eventually(lambda: outages(1))  # and a long backoff began
        during = _event()
        await direct.execute(INSERT, during.id, during.model_dump_json())  # wakes nothing
        await link.restore()
        await eventually(reconnected, within=30)
        await asyncio.sleep(0.5)
        assert not await published(during)  # still in the backoff

        work, after = UnitOfWork(database, relay), _event()
        async with work.connect() as connection:
            await connection.execute(outbox.insert, work.publish(after))
        await eventually(lambda: published(during, after), within=5)

        async def over() -> bool:
            return _logged(caplog, logging.INFO, "outbox relay: broker unavailable; back") == 1

        await eventually(over)  # logged once the relay's turn (an idle wait included) ends

        await link.cut()
        await eventually(lambda: outages(2))
        async with asyncio.timeout(2):
            await relay.stop()
    finally:
        await relay.stop()
        await broker.close()
        await direct.close()
        await database.dispose()
        await link.close()
    assert _logged(caplog, logging.WARNING, "outbox relay stopped while the broker is") == 1
    assert received.count(str(during.id)) == 1


async def test_with_nowhere_to_send_a_batch_is_published_without_a_count(
    nowhere_to_send: None,
    database_name: str,
    broker: Broker,
    received: list[str],
    metric_reader: InMemoryMetricReader,
) -> None:
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database_name}")
    direct = await asyncpg.connect(asyncpg_dsn(database_name))
    relay = OutboxRelay(database=database, outbox=Outbox(MetaData()), broker=broker)
    before = recorded(metric_reader, scope="meshkit")
    event = _event()
    try:
        await direct.execute(INSERT, event.id, event.model_dump_json())

        assert await relay.drain_once() == 1

        async def published() -> bool:
            return str(event.id) in received

        await eventually(published)
    finally:
        await direct.close()
        await database.dispose()
    assert recorded(metric_reader, scope="meshkit") == before


async def test_a_relay_claims_what_a_unit_of_work_committed_and_finds_the_rest_by_polling(
    database_name: str, broker: Broker, received: list[str]
) -> None:
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database_name}")
    direct = await asyncpg.connect(asyncpg_dsn(database_name))
    outbox = Outbox(MetaData())

    def relay(poll_interval: float) -> OutboxRelay:
        settings = RelaySettings(poll_interval=poll_interval)
        return OutboxRelay(database=database, outbox=outbox, broker=broker, settings=settings)

    async def write_elsewhere() -> uuid.UUID:
        event = _event()
        await direct.execute(INSERT, event.id, event.model_dump_json())
        return event.id

    async def published(event_id: uuid.UUID) -> bool:
        return str(event_id) in received

    woken, polling = relay(poll_interval=60), relay(poll_interval=0.5)
    try:
        woken.start()
        await asyncio.sleep(1.0)  # its first claim (on starting) is spent

        work, committed = UnitOfWork(database, woken), _event()
        async with work.connect() as connection:
            await connection.execute(outbox.insert, work.publish(committed))
        await eventually(lambda: published(committed.id), within=10)

        unannounced = await write_elsewhere()
        rolled_back = _event()

        async def failing_change() -> None:
            async with work.transaction() as connection:
                await connection.execute(outbox.insert, work.publish(rolled_back))
                raise RuntimeError("the change fails after its event was written")

        with pytest.raises(RuntimeError):
            await failing_change()
        async with work.connect() as connection:  # a commit that wrote no event
            await connection.execute(text("SELECT 1"))
        await asyncio.sleep(1.5)
        assert not await published(unannounced)  # nothing woke it before its poll
        await woken.stop()

        polling.start()  # claims `unannounced` on starting
        await eventually(lambda: published(unannounced), within=10)
        await asyncio.sleep(0.5)
        written_elsewhere = await write_elsewhere()  # no wake-up: found by the poll
        await eventually(lambda: published(written_elsewhere), within=10)
    finally:
        await woken.stop()
        await polling.stop()
        await direct.close()
        await database.dispose()
    assert str(rolled_back.id) not in received


def _event(event_type: str = "test.event") -> CloudEvent:
    return CloudEvent(source="test", type=event_type, subject="u1", data={})


def _sent(reader: InMemoryMetricReader, routing_key: str) -> dict[str | None, int]:
    """`messaging.client.sent.messages` for `routing_key`, by `error.type` (None: sent)."""
    counts: dict[str | None, int] = {}
    for point in metric_points(reader, "messaging.client.sent.messages"):
        if point.attributes["messaging.rabbitmq.destination.routing_key"] == routing_key:
            error = point.attributes.get("error.type")
            counts[error] = counts.get(error, 0) + point.value
    return counts


async def test_a_batch_is_counted_by_event_type_and_outcome(
    database_name: str, vhost: str, broker: Broker, metric_reader: InMemoryMetricReader
) -> None:
    database = Database(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database_name}")
    listener = await aio_pika.connect(amqp_url(vhost))
    direct = await asyncpg.connect(asyncpg_dsn(database_name))
    relay = OutboxRelay(database=database, outbox=Outbox(MetaData()), broker=broker)
    try:
        channel = await listener.channel()
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(EVENTS_EXCHANGE, "test.counted")  # nothing takes "test.unrouted"
        for event in [_event("test.counted") for _ in range(5)] + [_event("test.unrouted")]:
            await direct.execute(
                "INSERT INTO outbox (id, event_type, event) VALUES ($1, $2, $3::jsonb)",
                event.id,
                event.type,
                event.model_dump_json(),
            )

        assert await relay.drain_once() == 6  # one batch

        assert _sent(metric_reader, "test.counted") == {None: 5}
        [(error, refused)] = _sent(metric_reader, "test.unrouted").items()
        assert error is not None
        assert refused == 1
    finally:
        await listener.close()
        await direct.close()
        await database.dispose()


@pytest.mark.parametrize("statement", ["claim", "mark_sent", "release"])
async def test_a_statement_planned_on_an_empty_outbox_does_not_scan_the_sent_rows(
    database_name: str, statement: str
) -> None:
    """A relay's prepared statements keep the plan PostgreSQL made when they were first run,
    often on an empty outbox, until the table is analysed (never, with autovacuum off): that
    plan must not reach the rows by reading every row the outbox retains."""
    compiled = getattr(_RelayStatements(Outbox(MetaData()).table), statement).compile(
        dialect=postgresql_asyncpg.dialect()  # type: ignore[no-untyped-call]
    )
    arguments = {"sent": "'{}'::uuid[]", "ids": "'{}'::uuid[]", "lease": "30", "batch": "200"}
    execute = f"EXECUTE planned({', '.join(arguments[n] for n in compiled.positiontup or ())})"
    connection = await asyncpg.connect(asyncpg_dsn(database_name))
    try:
        await connection.execute("SET plan_cache_mode = force_generic_plan")
        await connection.execute(f"PREPARE planned AS {compiled}")
        await connection.execute(execute)  # planned now, on the empty table
        await connection.execute(
            "INSERT INTO outbox (id, event_type, event, sent_at) SELECT gen_random_uuid(),"
            " 'test.event', '{}', now() FROM generate_series(1, 5000)"
        )
        plan = "\n".join(row[0] for row in await connection.fetch(f"EXPLAIN {execute}"))
    finally:
        await connection.close()

    assert "Seq Scan" not in plan, plan
