"""Throw-away PostgreSQL databases on the machine's server, dropped when the test run ends."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def asyncpg_dsn(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


def sqlalchemy_url(database: str) -> str:
    return asyncpg_dsn(database).replace("postgresql://", "postgresql+asyncpg://", 1)


@asynccontextmanager
async def connected(dsn: str = ADMIN_DSN) -> AsyncIterator[asyncpg.Connection]:
    """One connection for the block, closed after it."""
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


async def create_database(prefix: str) -> str:
    """Creates `<prefix>_<random>` and returns its name."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    async with connected() as connection:
        await connection.execute(f'CREATE DATABASE "{name}"')
    return name


async def drop_database(name: str) -> None:
    async with connected() as connection:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def truncate_all(database: str, *, keep: tuple[str, ...] = ("alembic_version",)) -> None:
    """Empties every table of the public schema (between tests)."""
    async with connected(asyncpg_dsn(database)) as connection:
        tables = [
            row["tablename"]
            for row in await connection.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
            if row["tablename"] not in keep
        ]
        if tables:
            await connection.execute(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
            )
