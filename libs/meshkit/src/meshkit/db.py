"""One async SQLAlchemy engine per process, and its connections: autocommit for single
statements, a transaction for several (services open them through `meshkit.unit_of_work`)."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AbstractAsyncContextManager

from sqlalchemy import ColumnElement, MetaData, Table, and_, bindparam, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from meshkit.instrumentation import instrument_engine
from meshkit.telemetry import untraced

logger = logging.getLogger("meshkit.db")

# How long closing the engine waits for the database to answer before it drops the connections.
_CLOSE_CHECK_SECONDS = 1.0

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def owners_row(table: Table, id_parameter: str) -> ColumnElement[bool]:
    """The row of `table` whose `id` is the statement's `id_parameter` and whose `user_id` is
    its `owner_id`: what a statement that changes only the caller's own row selects. (Not
    `user_id`: a column of an UPDATE's own table may not name a parameter.)"""
    return and_(table.c.id == bindparam(id_parameter), table.c.user_id == bindparam("owner_id"))


# SQLSTATEs that mean "the server cannot serve you right now", not "your statement is wrong":
# connection exceptions (class 08), shutdown / starting up (57P01-57P03), too many connections.
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})


def is_database_unavailable(exc: BaseException) -> bool:
    """True for errors caused by the database being unreachable (down, restarting, full) rather
    than by the request: they are answered 503, so clients retry instead of seeing a 500."""
    if isinstance(exc, sa_exc.TimeoutError):  # no pooled connection became free in time
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        sqlstate = str(getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", ""))
        return sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
    # asyncpg raises plain OSErrors (refused, reset, timed out) while connecting.
    return isinstance(exc, OSError)


def new_metadata() -> MetaData:
    """Each service owns its metadata; constraint names are explicit so migrations stay stable."""
    return MetaData(naming_convention=NAMING_CONVENTION)


class Database:
    """The engine of one process; created and disposed by the lifespan.

    `pre_ping` is off by default: SQLAlchemy's asyncpg ping is three round trips at every
    checkout, as many as a whole read. Without it a connection that died with the server fails
    one request, answered 503 (`is_database_unavailable`), and SQLAlchemy invalidates every
    pooled connection older than the failure (docs/benchmarks.md).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        pre_ping: bool = False,
    ) -> None:
        self.engine: AsyncEngine = create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=pre_ping,
            pool_recycle=1800,
        )
        instrument_engine(self.engine.sync_engine)
        # Autocommit connections from the same pool: each statement is sent alone, without
        # BEGIN and COMMIT around it (asyncpg's adapter sets the mode without a query).
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    def connect(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection on which every statement commits by itself: for reads and for writes
        that are one statement."""
        return self._autocommit.connect()

    def transaction(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection in a transaction, committed on success and rolled back on any error."""
        return self.engine.begin()

    async def ping(self) -> None:
        """Readiness check: raises if the database does not answer."""
        with untraced():
            async with self.connect() as connection:
                await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        """Closes the pooled connections. Closing one waits for the server's goodbye, so when
        the database does not answer at all (its packets lost; a refusal or a reset is an
        answer) they are dropped instead: a stopping process must not wait on it."""
        if self.engine.pool.checkedin():  # type: ignore[attr-defined]
            try:
                await asyncio.wait_for(self.ping(), _CLOSE_CHECK_SECONDS)
            except TimeoutError:
                logger.warning("the database does not answer; its connections are dropped")
                await self.engine.dispose(close=False)
                return
            except (sa_exc.DBAPIError, OSError):
                pass
        await self.engine.dispose()
