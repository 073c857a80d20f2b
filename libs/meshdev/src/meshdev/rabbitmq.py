"""Throw-away RabbitMQ virtual hosts on the machine's broker, deleted when a test run ends.

A vhost isolates exchanges and queues completely, so tests share the broker without seeing
each other's messages. Managed with `rabbitmqctl` (the management plugin is not required).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
from urllib.parse import quote, urlsplit, urlunsplit

BROKER_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
RABBITMQCTL = os.environ.get("RABBITMQCTL", shutil.which("rabbitmqctl") or "rabbitmqctl")


def amqp_url(vhost: str, *, host: str | None = None, port: int | None = None) -> str:
    """The broker URL for `vhost`, optionally through another address (a fault proxy)."""
    parts = urlsplit(BROKER_URL)
    netloc = parts.netloc
    if host is not None or port is not None:
        credentials = netloc.rpartition("@")[0]
        address = f"{host or parts.hostname}:{port or parts.port or 5672}"
        netloc = f"{credentials}@{address}" if credentials else address
    return urlunsplit((parts.scheme, netloc, "/" + quote(vhost, safe=""), "", ""))


async def _rabbitmqctl(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        RABBITMQCTL,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {output.decode()[-2000:]}")


async def create_vhost(prefix: str) -> str:
    """Creates `<prefix>_<random>` with full permissions for the test user; returns its name."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    user = urlsplit(BROKER_URL).username or "guest"
    await _rabbitmqctl("add_vhost", name)
    await _rabbitmqctl("set_permissions", "-p", name, user, ".*", ".*", ".*")
    return name


async def delete_vhost(name: str) -> None:
    await _rabbitmqctl("delete_vhost", name)
