"""One async SQLAlchemy engine per process; a request-scoped session that owns the transaction."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

import sqlalchemy.ext.asyncio as sa_asyncio
from fastapi import Depends, Request
from sqlalchemy import MetaData, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from meshkit.telemetry import untraced

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


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
    """The engine and session factory of one process; created and disposed by the lifespan."""

    def __init__(
        self, url: str, *, pool_size: int = 10, max_overflow: int = 10, echo: bool = False
    ) -> None:
        # Looked up on the module at call time so OpenTelemetry's engine hook applies.
        self.engine: AsyncEngine = sa_asyncio.create_async_engine(
            url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_recycle=1800,
            echo=echo,
        )
        self.sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session whose work is committed on success and rolled back on any error."""
        async with self.sessions() as session, session.begin():
            yield session

    async def ping(self) -> None:
        """Readiness check: raises if the database does not answer."""
        with untraced():
            async with self.engine.connect() as connection:
                await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.engine.dispose()


async def get_database(request: Request) -> Database:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hand-off per request.
    database = getattr(request.app.state, "database", None)
    if not isinstance(database, Database):
        raise RuntimeError("this service has no database configured")
    return database


async def get_session(
    database: Annotated[Database, Depends(get_database)],
) -> AsyncIterator[AsyncSession]:
    """Request-scoped session: handlers never commit; the dependency does, or rolls back."""
    async with database.transaction() as session:
        yield session


# scope="function": commit before the response is sent, so a failed commit is never answered 2xx.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
