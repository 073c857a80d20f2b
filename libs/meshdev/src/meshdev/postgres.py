"""Throw-away PostgreSQL databases on the machine's server, dropped when the test run ends."""

from __future__ import annotations

import os
import secrets

import asyncpg

ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def asyncpg_dsn(database: str) -> str:
    base, _, _ = ADMIN_DSN.rpartition("/")
    return f"{base}/{database}"


def sqlalchemy_url(database: str) -> str:
    return asyncpg_dsn(database).replace("postgresql://", "postgresql+asyncpg://", 1)


async def create_database(prefix: str) -> str:
    """Creates `<prefix>_<random>` and returns its name."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def truncate_all(database: str, *, keep: tuple[str, ...] = ("alembic_version",)) -> None:
    """Empties every table of the public schema (between tests)."""
    connection = await asyncpg.connect(asyncpg_dsn(database))
    try:
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
    finally:
        await connection.close()
