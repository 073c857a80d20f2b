"""The write boundary: a unit of work opens the connection a service needs, commits it or rolls
it back, and after a commit that wrote events wakes this process's outbox relay, so they are
published at once instead of at its next poll. Routes get one per request (`UnitOfWorkDep`),
a consumer makes one per batch of messages."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Annotated, Protocol

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.db import Database
from meshkit.messaging.events import CloudEvent
from meshkit.messaging.outbox import OutboxRow, outbox_row


class Relay(Protocol):
    """What a unit of work needs of its process's relay (`meshkit.messaging.OutboxRelay`)."""

    def wake(self) -> None: ...


class UnitOfWork:
    """The database work of one request, or of one batch of messages.

    `async with work.connect() as connection:` runs each statement on its own, committed by
    itself: reads, and a write that is one statement (a change and its event row, see
    `Outbox.with_row`), without BEGIN and COMMIT round trips. `async with work.transaction() as
    connection:` commits its statements together when the block ends, and rolls them back if
    it raises. A connection is taken from the pool only when a block starts, so none is held
    while the service waits on anything else.

    Events are written as the rows `publish` gives; once a block that wrote some has committed,
    this process's relay is woken to publish them.
    """

    __slots__ = ("_database", "_events", "_opened", "_relay")

    def __init__(self, database: Database, relay: Relay | None = None) -> None:
        self._database = database
        self._relay = relay
        self._opened: AbstractAsyncContextManager[AsyncConnection] | None = None
        self._events = 0

    def connect(self) -> UnitOfWork:
        """A block whose statements each commit by themselves."""
        return self._open(self._database.connect())

    def transaction(self) -> UnitOfWork:
        """A block whose statements commit together, or not at all."""
        return self._open(self._database.transaction())

    def _open(self, opened: AbstractAsyncContextManager[AsyncConnection]) -> UnitOfWork:
        if self._opened is not None:
            raise RuntimeError("this unit of work is in a block already")
        self._opened = opened
        return self

    def publish(self, event: CloudEvent, *, trace: Mapping[str, str] | None = None) -> OutboxRow:
        """`event`'s outbox row (with the trace context it was caused in, default the current
        one), for a statement of this work to write; published once the block commits."""
        self._events += 1
        return outbox_row(event, trace=trace)

    async def __aenter__(self) -> AsyncConnection:
        opened = self._opened
        if opened is None:
            raise RuntimeError("open a block with `connect()` or `transaction()`")
        try:
            return await opened.__aenter__()
        except BaseException:  # no connection: the block never started
            self._opened, self._events = None, 0
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        opened, self._opened = self._opened, None
        events, self._events = self._events, 0
        assert opened is not None  # entered by `__aenter__`
        await opened.__aexit__(exc_type, exc, traceback)  # commits, or rolls back
        if exc_type is None and events and self._relay is not None:
            self._relay.wake()


async def unit_of_work(request: Request) -> UnitOfWork:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hand-off per request.
    # Not a `yield` dependency, whose exit FastAPI wraps in cancel scopes at a cost per request
    # (docs/benchmarks.md, "The unit of work"): the service's own block commits.
    state = request.app.state
    return UnitOfWork(state.database, getattr(state, "outbox_relay", None))


# A route's unit of work: the service opens it and commits before the route answers, so a
# failed commit is never answered 2xx.
UnitOfWorkDep = Annotated[UnitOfWork, Depends(unit_of_work)]
