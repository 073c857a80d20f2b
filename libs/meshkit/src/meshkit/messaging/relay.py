"""The outbox relay: publishes the rows of a service's outbox (`meshkit.messaging.outbox`),
woken by its process's unit of work after a commit that wrote events and by its poll for the
rest; built and stopped by the service's lifespan (`meshkit.messaging.lifespan`).

Stopping lets the batch being published finish, so its rows are marked sent, but nothing that
waits: for the broker's first connection, a backoff, the next poll, or a claim the database
does not answer. docs/events.md describes the claim, the lease and the delivery guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import aio_pika
from aio_pika.abc import AbstractExchange
from sqlalchemy import ARRAY, Table, Uuid, bindparam, delete, func, select, text, update
from sqlalchemy.engine import CursorResult, Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Executable, Update

from meshkit.db import Database
from meshkit.messaging.broker import BROKER_DOWN_ERRORS, Broker
from meshkit.messaging.events import EVENTS_EXCHANGE, event_message
from meshkit.messaging.metrics import message_attributes, sent_messages, watch_backlog
from meshkit.messaging.outbox import Outbox
from meshkit.messaging.tracing import context_from, publish_span, trace_carrier
from meshkit.retry import Retry
from meshkit.telemetry import metrics_enabled, sampled_out, tracing_enabled, untraced

# The outbox's logger, as the runbook filters it.
logger = logging.getLogger("meshkit.messaging.outbox")


class DatabaseUnavailableError(Exception):
    """The relay's database did not answer (refused, reset, restarting): told apart from the
    broker's failures, which are `ConnectionError`s too."""


class _StopRequestedError(Exception):
    """The relay was asked to stop before, or while, a statement that publishes nothing ran;
    the statement was not run, or given up."""


@dataclass(frozen=True, slots=True)
class RelaySettings:
    # Large batches drain a backlog faster and with less of the relay's CPU: fewer claim/mark
    # round trips and confirm waits (docs/benchmarks.md, "Outbox batch size").
    batch_size: int = 1000
    poll_interval: float = 1.0
    publish_timeout: float = 10.0
    retention: timedelta = timedelta(days=7)
    purge_every: float = 600.0
    backlog_every: float = 5.0
    # How long confirmed rows wait for the next claim to mark them before they are marked on
    # their own: under load the next claim comes well before.
    mark_delay: float = 0.05
    # How long a stop waits for a statement that publishes nothing (a claim, a count) before
    # giving it up: one that has not answered by then waits on a database that is not there.
    statement_stop_wait: float = 1.0

    @property
    def lease_seconds(self) -> float:
        """How long a claimed row is left to its relay before another may publish it: longer
        than a batch's confirms may take (`publish_timeout`), and short, because the rows of a
        claim whose answer was lost with the database connection wait as long."""
        return self.publish_timeout + 5.0


class _RelayStatements:
    """The relay's statements for one outbox table, built once."""

    def __init__(self, table: Table) -> None:
        # `= ANY(ARRAY(subquery))` makes PostgreSQL run the locking subquery once; the rows it
        # locked are updated by the same statement, so the claim needs no transaction. The
        # rows of the batch before (published since) are marked sent in the same statement.
        # The outer `sent_at IS NULL` is true of every row the subquery locked; it lets the
        # plan reach them through the pending rows' index. The relay's prepared statement
        # keeps the plan made while its outbox was empty, until the table is analysed: without
        # it that plan scans the whole outbox, sent rows of the retention included, at every
        # claim (docs/benchmarks.md, "PostgreSQL per order").
        claim = text(
            f"""
            WITH marked AS (
                UPDATE {table.name} SET sent_at = now()
                WHERE id = ANY(:sent) AND sent_at IS NULL
            )
            UPDATE {table.name} SET next_attempt_at = now() + make_interval(secs => :lease)
            WHERE id = ANY(ARRAY(
                SELECT id FROM {table.name}
                WHERE sent_at IS NULL AND next_attempt_at <= now()
                ORDER BY next_attempt_at, created_at
                LIMIT :batch
                FOR UPDATE SKIP LOCKED
            )) AND sent_at IS NULL
            RETURNING id, event_type, traceparent, tracestate, attempts,
                event::text AS event, event->>'source' AS source, event->>'time' AS time
            """  # noqa: S608 - the table name is the service's own, not input
        ).bindparams(bindparam("sent", type_=ARRAY(Uuid)))
        # The typed columns declared (by position): the result's description is then read
        # once and cached, not at every claim.
        self.claim = claim.columns(
            table.c.id, table.c.event_type, table.c.traceparent, table.c.tracestate,
            table.c.attempts,
        )  # fmt: skip
        # `sent_at IS NULL` here too, for the plan (see the claim); a row marked already keeps
        # the time it was first marked.
        pending = update(table).where(
            table.c.id == func.any(bindparam("ids", type_=ARRAY(Uuid))), table.c.sent_at.is_(None)
        )
        self.mark_sent: Update = pending.values(sent_at=func.now())
        self.release: Update = pending.values(next_attempt_at=func.now())
        self.count_pending = select(
            func.count(),
            func.coalesce(func.extract("epoch", func.now() - func.min(table.c.created_at)), 0),
        ).where(table.c.sent_at.is_(None))


class OutboxRelay:
    """Publishes a service's outbox; run one per process, as many processes as you like."""

    def __init__(
        self,
        *,
        database: Database,
        outbox: Outbox,
        broker: Broker,
        settings: RelaySettings | None = None,
    ) -> None:
        self._database = database
        self._table = table = outbox.table
        self._broker = broker
        self._settings = settings or RelaySettings()
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._statement: asyncio.Task[Any] | None = None  # one a stop may give up
        self._outage: str | None = None  # "broker" or "database" while the relay waits on it
        # An outage's backoff; a wake-up (a write of this process got through) ends it early.
        self._retry = Retry(
            on=(DatabaseUnavailableError, *BROKER_DOWN_ERRORS),
            base=0.5,
            cap=15.0,
            stop=self._stop_requested,
            wake=self._wake,
            logger=logger,
            what=lambda _: f"outbox relay: {self._outage} unavailable",  # the runbook quotes it
        )
        self._last_purge = time.monotonic()
        self._last_backlog = float("-inf")
        self._statements = _RelayStatements(table)
        self._unmarked: list[Any] = []  # ids published and confirmed, not yet marked sent
        # Read by the `outbox.pending.*` gauges.
        self.table_name = table.name
        self.pending_rows = 0
        self.oldest_pending_age = 0.0
        watch_backlog(self)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    def wake(self) -> None:
        """Claims at once: its process committed events (`meshkit.unit_of_work`)."""
        self._wake.set()

    async def stop(self, *, grace_seconds: float = 10.0) -> None:
        """Finish the batch being published (so its rows are marked sent), then stop; a wait
        (see the module's docstring) ends at once."""
        self._stop_requested.set()
        self._wake.set()
        statement = self._statement
        if statement is not None:
            await asyncio.wait({statement}, timeout=self._settings.statement_stop_wait)
            statement.cancel()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
            except TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        # A stop ends the loop: by its own error, or by the failure whose backoff it ended.
        with contextlib.suppress(
            _StopRequestedError, DatabaseUnavailableError, *BROKER_DOWN_ERRORS
        ):
            while not self._stop_requested.is_set():
                await self._retry(self._step)
        # The broker as it is now: it may have come back during a backoff, or gone while idle.
        broker_down = not self._broker.is_connected
        if broker_down or self._outage == "database":
            logger.warning(
                "outbox relay stopped while the %s is unreachable; unsent events stay in the "
                "outbox for the next relay",
                "broker" if broker_down else "database",
            )
        try:
            await self._mark_unmarked()
        except DatabaseUnavailableError as exc:
            logger.warning(
                "outbox relay: %d published rows not marked on stop (%s); another relay "
                "publishes them again when their lease ends",
                len(self._unmarked),
                exc,
            )

    async def _step(self) -> None:
        """Claims and publishes a batch; idles once the outbox is drained; notes an outage."""
        self._wake.clear()
        try:
            if not await self._broker.wait_connected(unless=self._stop_requested):
                raise _StopRequestedError  # the broker never connected: the stop says so
            claimed = await self.drain_once()
            self._outage = None
            await self._maybe_purge()
            await self._maybe_measure_backlog()
            if claimed < self._settings.batch_size:
                await self._idle()
        except DatabaseUnavailableError:
            self._outage = "database"
            raise
        except BROKER_DOWN_ERRORS:
            self._outage = "broker"
            await self._maybe_measure_backlog()
            raise

    async def _unless_stopped(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]:
        """Runs `statement` (one that publishes nothing) as a task `stop` may give up."""
        if self._stop_requested.is_set():
            raise _StopRequestedError
        task = asyncio.ensure_future(self._execute(statement, parameters))
        self._statement = task
        try:
            return await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                self._outage = "database"  # given up by `stop`: the database did not answer
                raise _StopRequestedError from None
            raise
        finally:
            self._statement = None

    async def _idle(self) -> None:
        """Nothing more to claim now: wait for the next wake-up. Rows still to be marked wait
        `mark_delay` for a claim to mark them, then are marked on their own."""
        if self._unmarked and await self._sleep(self._settings.mark_delay):
            return  # woken in time: the next claim marks them
        await self._mark_unmarked()
        await self._sleep(self._settings.poll_interval)

    async def _execute(
        self, statement: Executable, parameters: Mapping[str, Any] | None = None
    ) -> CursorResult[*tuple[Any, ...]]:
        """Runs one of the relay's own statements on an autocommit connection (no spans: one
        batch mixes many traces); its failures raise `DatabaseUnavailableError`."""
        try:
            with untraced():
                async with self._database.connect() as connection:
                    return await connection.execute(statement, parameters)
        except (DBAPIError, OSError) as exc:
            raise DatabaseUnavailableError(str(exc).splitlines()[0]) from exc

    async def _sleep(self, seconds: float) -> bool:
        """Sleeps, ending early on a wake-up (a stop wakes too); True if woken."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)
        return self._wake.is_set()

    async def _mark_unmarked(self) -> None:
        """Marks the confirmed rows no claim has marked yet (the relay goes idle or stops)."""
        if not self._unmarked:
            return
        ids, self._unmarked = self._unmarked, []
        try:
            await self._execute(self._statements.mark_sent, {"ids": ids})
        except DatabaseUnavailableError:
            # Published, but still leased: the next claim tries again (or, if this process
            # ends first, another relay publishes them once more when the lease runs out).
            self._unmarked = ids + self._unmarked
            raise

    async def drain_once(self) -> int:
        """Claim (marking the batch before) and publish one batch; returns how many rows were
        claimed."""
        exchange = await self._broker.publish_channel.get_exchange(EVENTS_EXCHANGE, ensure=False)
        # The rows the last batch published are marked sent by this same statement.
        marks, self._unmarked = self._unmarked, []
        try:
            rows = await self._claim(marks)
        except BaseException:
            self._unmarked = marks + self._unmarked
            raise
        if not rows:
            return 0
        outcomes = await asyncio.gather(
            *(self._publish(exchange, row) for row in rows), return_exceptions=True
        )
        if metrics_enabled():  # one count per event type and outcome, not one per message
            counted = Counter(
                (row.event_type, None if outcome is None else type(outcome).__name__)
                for row, outcome in zip(rows, outcomes, strict=True)
            )
            for (event_type, error_type), count in counted.items():
                attributes = message_attributes(EVENTS_EXCHANGE, event_type, error=error_type)
                sent_messages.add(count, attributes)
        refused: list[tuple[Row[Any], BaseException]] = []
        broken: list[tuple[Any, BaseException]] = []
        for row, outcome in zip(rows, outcomes, strict=True):
            if outcome is None:
                # Marked by the next claim (which follows at once under load) or, when the relay
                # goes idle, on their own after `mark_delay`: one statement per batch, not two.
                self._unmarked.append(row.id)
            elif isinstance(outcome, aio_pika.exceptions.DeliveryError):  # returned, or nacked
                refused.append((row, outcome))
            else:
                broken.append((row.id, outcome))
        for row, error in refused:
            await self._postpone(row, error)
        if broken:
            # Not confirmed (the broker went away): free them at once rather than when the
            # lease ends, so they go out as soon as the broker is back; the caller backs off.
            await self._execute(self._statements.release, {"ids": [row_id for row_id, _ in broken]})
            raise broken[0][1]
        return len(rows)

    async def _claim(self, marks: list[Any]) -> Sequence[Row[Any]]:
        """Leases the next batch, marking the rows in `marks` sent."""
        settings = self._settings
        parameters = {"batch": settings.batch_size, "lease": settings.lease_seconds, "sent": marks}
        return (await self._unless_stopped(self._statements.claim, parameters)).all()

    async def _publish(self, exchange: AbstractExchange, row: Row[Any]) -> None:
        stored = {"traceparent": row.traceparent, "tracestate": row.tracestate}
        parent = context_from(stored) if tracing_enabled() else None
        if parent is None or sampled_out(parent):
            # No span to make (tracing is off, and a no-op one costs CPU, docs/benchmarks.md; or
            # the request that wrote the row was not sampled): the stored context travels on
            # unchanged, so services downstream stay in the trace and keep its decision.
            await self._send(exchange, row, {key: value for key, value in stored.items() if value})
            return
        with publish_span(
            exchange=EVENTS_EXCHANGE,
            routing_key=row.event_type,
            message_id=str(row.id),
            parent=parent,
        ):
            await self._send(exchange, row, trace_carrier())

    async def _send(
        self, exchange: AbstractExchange, row: Row[Any], trace_headers: dict[str, str]
    ) -> None:
        message = event_message(
            row.event.encode(),
            event_id=str(row.id),
            event_type=row.event_type,
            source=row.source,
            time=datetime.fromisoformat(row.time),
            trace_headers=trace_headers,
        )
        await exchange.publish(
            message,
            routing_key=row.event_type,
            mandatory=True,
            timeout=self._settings.publish_timeout,
        )

    async def _postpone(self, row: Row[Any], error: BaseException) -> None:
        """A refused or unroutable event waits (growing delays) instead of blocking the batch."""
        delay = min(60.0, 2.0 ** min(row.attempts, 6))
        logger.error(
            "outbox relay: %s %s was refused by the broker (%s); retrying in %.0fs",
            row.event_type,
            row.id,
            error,
            delay,
        )
        await self._execute(
            update(self._table)
            .where(self._table.c.id == row.id)
            .values(
                attempts=self._table.c.attempts + 1,
                last_error=str(error)[:1000],
                next_attempt_at=func.now() + timedelta(seconds=delay),
            )
        )

    async def _maybe_measure_backlog(self) -> None:
        """Refreshes the `outbox.pending.*` gauges every `backlog_every` seconds; while the
        database does not answer they keep their last figures (this must not end the relay:
        it also runs while the broker is away)."""
        if time.monotonic() - self._last_backlog < self._settings.backlog_every:
            return
        self._last_backlog = time.monotonic()
        try:
            result = await self._unless_stopped(self._statements.count_pending)
        except DatabaseUnavailableError as exc:
            logger.info("outbox relay: backlog not measured (%s)", exc)
            return
        count, age = result.one()
        self.pending_rows, self.oldest_pending_age = int(count), float(age)

    async def _maybe_purge(self) -> None:
        if time.monotonic() - self._last_purge < self._settings.purge_every:
            return
        self._last_purge = time.monotonic()
        table = self._table
        old = select(table.c.id).where(table.c.sent_at < func.now() - self._settings.retention)
        await self._unless_stopped(delete(table).where(table.c.id.in_(old.limit(5000))))
