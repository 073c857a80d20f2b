"""The fault proxy really cuts and restores traffic to a real server (PostgreSQL here)."""

from __future__ import annotations

import asyncpg
import pytest

from meshdev.faults import TcpProxy


async def test_proxy_forwards_cuts_and_restores_postgres_traffic() -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        connection = await asyncpg.connect(dsn)
        assert await connection.fetchval("SELECT 1") == 1

        await proxy.cut()

        with pytest.raises((asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError)):
            await connection.fetchval("SELECT 1")
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(dsn, timeout=2)

        await proxy.restore()
        again = await asyncpg.connect(dsn)
        assert await again.fetchval("SELECT 2") == 2
        await again.close()
    finally:
        await proxy.close()


async def test_a_black_hole_keeps_connections_open_and_answers_nothing() -> None:
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{proxy.port}/postgres"
        connection = await asyncpg.connect(dsn)

        await proxy.blackhole()

        # Neither refused nor reset: the query and a new connection just never get an answer.
        with pytest.raises(TimeoutError):
            await connection.fetchval("SELECT 1", timeout=0.5)
        with pytest.raises(TimeoutError):
            await asyncpg.connect(dsn, timeout=0.5)

        await proxy.restore()
        again = await asyncpg.connect(dsn)
        assert await again.fetchval("SELECT 2") == 2
        await again.close()
        connection.terminate()
    finally:
        await proxy.close()
