"""Key prefixes of their own on the machine's Redis, whose keys are deleted when a test ends.

The machine's Redis is shared by everyone's test runs: a test never flushes it, it writes only
under a prefix made for it (`RATE_LIMIT_KEY_PREFIX`) and deletes exactly those keys afterwards.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import coredis

from meshdev.faults import TcpProxy

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def redis_address() -> tuple[str, int]:
    parts = urlsplit(REDIS_URL)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def redis_url(*, port: int | None = None) -> str:
    """The machine's Redis, or the same database through another port (a fault proxy)."""
    if port is None:
        return REDIS_URL
    parts = urlsplit(REDIS_URL)
    return f"{parts.scheme}://127.0.0.1:{port}{parts.path}"


async def keys_under(prefix: str) -> list[str]:
    """Every key written under `prefix` (`limits` writes `<prefix>:<key>`)."""
    client = coredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
    finally:
        client.connection_pool.disconnect()


async def delete_keys_under(prefix: str) -> int:
    client = coredis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = tuple([key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)])
        return await client.delete(keys) if keys else 0
    finally:
        client.connection_pool.disconnect()


@asynccontextmanager
async def key_prefix(name: str) -> AsyncIterator[str]:
    """`<name>-<random>`, for one test's keys; they are deleted when it ends."""
    prefix = f"{name}-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        await delete_keys_under(prefix)


@asynccontextmanager
async def redis_proxy() -> AsyncIterator[TcpProxy]:
    """A fault proxy that is the only way to the machine's Redis (`redis_url(port=…)`)."""
    proxy = await TcpProxy(*redis_address()).start()
    try:
        yield proxy
    finally:
        await proxy.close()
