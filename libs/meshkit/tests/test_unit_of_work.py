"""The write boundary: a unit of work takes a connection only for a block, commits or rolls the
block back, and wakes its process's relay after a commit that wrote events, and only then."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Column, MetaData, Table, UniqueConstraint, Uuid, select, text
from sqlalchemy import exc as sa_exc

from meshdev.postgres import create_database, drop_database, sqlalchemy_url
from meshkit.db import Database
from meshkit.messaging import CloudEvent, Outbox
from meshkit.unit_of_work import UnitOfWork

metadata = MetaData()
outbox = Outbox(metadata)
# Checked at COMMIT, so a block can fail there, after all of its statements succeeded.
pairs = Table(
    "pairs",
    metadata,
    Column("id", Uuid),
    UniqueConstraint("id", deferrable=True, initially="DEFERRED"),
)


class CountingRelay:
    def __init__(self) -> None:
        self.wakes = 0

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture(scope="module")
async def database() -> AsyncIterator[Database]:
    name = await create_database("meshkit_test")
    database = Database(sqlalchemy_url(name))
    try:
        async with database.transaction() as connection:
            await connection.run_sync(metadata.create_all)
        yield database
    finally:
        await database.dispose()
        await drop_database(name)


def _event() -> CloudEvent:
    return CloudEvent(source="test", type="test.event", subject="u1", data={})


async def _stored(database: Database, event: CloudEvent) -> bool:
    async with database.connect() as connection:
        found = await connection.scalar(
            select(outbox.table.c.id).where(outbox.table.c.id == event.id)
        )
    return found is not None


@pytest.mark.parametrize("block", ["connect", "transaction"])
async def test_a_block_that_wrote_an_event_wakes_the_relay_once_committed(
    database: Database, block: str
) -> None:
    relay, event = CountingRelay(), _event()
    work = UnitOfWork(database, relay)
    opened = getattr(work, block)()
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]

    async with opened as connection:
        await connection.execute(outbox.insert, work.publish(event))
        assert relay.wakes == 0

    assert relay.wakes == 1
    assert await _stored(database, event)


async def test_a_rolled_back_block_does_not_wake_the_relay(database: Database) -> None:
    relay, event = CountingRelay(), _event()
    work = UnitOfWork(database, relay)

    async def failing_rule() -> None:
        async with work.transaction() as connection:
            await connection.execute(outbox.insert, work.publish(event))
            raise RuntimeError("the rule fails after the event was written")

    with pytest.raises(RuntimeError):
        await failing_rule()

    assert relay.wakes == 0
    assert not await _stored(database, event)
    async with work.connect() as connection:  # the work goes on, its events forgotten
        await connection.execute(text("SELECT 1"))
    assert relay.wakes == 0


async def test_a_commit_that_fails_does_not_wake_the_relay(database: Database) -> None:
    relay, event, pair = CountingRelay(), _event(), {"id": _event().id}
    work = UnitOfWork(database, relay)

    async def refused_at_commit() -> None:
        async with work.transaction() as connection:
            await connection.execute(outbox.insert, work.publish(event))
            await connection.execute(pairs.insert(), [pair, pair])  # checked at COMMIT

    with pytest.raises(sa_exc.IntegrityError):
        await refused_at_commit()

    assert relay.wakes == 0
    assert not await _stored(database, event)


async def test_a_block_without_events_does_not_wake_the_relay(database: Database) -> None:
    relay = CountingRelay()
    work = UnitOfWork(database, relay)

    async with work.transaction() as connection:
        await connection.execute(pairs.insert(), {"id": _event().id})

    assert relay.wakes == 0


async def test_a_unit_of_work_opens_one_block_at_a_time(database: Database) -> None:
    work = UnitOfWork(database)

    with pytest.raises(RuntimeError, match="in a block already"):
        async with work.connect():
            work.transaction()
    with pytest.raises(RuntimeError, match="open a block"):
        async with work:
            pass
    async with work.connect() as connection:  # blocks one after another are fine
        assert await connection.scalar(text("SELECT 1")) == 1


async def test_a_block_that_could_not_connect_leaves_the_work_usable() -> None:
    unreachable = Database("postgresql+asyncpg://postgres@127.0.0.1:1/nothing")
    relay = CountingRelay()
    work = UnitOfWork(unreachable, relay)
    try:
        for _ in range(2):  # the second attempt fails the same way, not "in a block already"
            work.publish(_event())
            with pytest.raises(ConnectionRefusedError):
                async with work.connect():
                    pass
    finally:
        await unreachable.dispose()
    assert relay.wakes == 0
