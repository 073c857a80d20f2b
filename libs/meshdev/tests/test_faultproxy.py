from __future__ import annotations

import asyncpg
import pytest

from meshdev.faultproxy import FaultProxy


async def test_proxy_forwards_cuts_and_restores_postgres_traffic() -> None:
    async with FaultProxy(upstream_host="127.0.0.1", upstream_port=5432) as proxy:
        dsn = f"postgresql://postgres@{proxy.address}/postgres"
        connection = await asyncpg.connect(dsn)
        assert await connection.fetchval("SELECT 1") == 1

        await proxy.cut()

        with pytest.raises(
            (asyncpg.exceptions.ConnectionDoesNotExistError, ConnectionError, OSError)
        ):
            await connection.fetchval("SELECT 1")
        with pytest.raises(ConnectionRefusedError):
            await asyncpg.connect(dsn, timeout=2)

        await proxy.restore()
        again = await asyncpg.connect(dsn)
        assert await again.fetchval("SELECT 2") == 2
        await again.close()
