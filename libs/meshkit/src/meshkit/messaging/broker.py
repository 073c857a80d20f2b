"""One RabbitMQ connection per process, kept alive by aio-pika's robust connection.

`connect_robust` reconnects after a lost connection but fails on the *first* attempt; a service
must start (and answer `/healthz`) while the broker is still down, so the first connection is
retried here in the background with jittered backoff, and readiness reports the broker until then.
Publishing and consuming use separate channels, so a slow consumer never holds up confirms.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)

from meshkit.messaging.events import DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE

logger = logging.getLogger("meshkit.messaging.broker")

Declare = Callable[[AbstractChannel], Awaitable[None]]


class BrokerUnavailableError(ConnectionError):
    """The broker is not connected (yet, or right now)."""


def backoff_delay(attempt: int, *, base: float = 0.25, cap: float = 15.0) -> float:
    """Exponential backoff with full jitter, so replicas do not retry in step."""
    return random.uniform(0, min(cap, base * 2**attempt))  # noqa: S311 - jitter, not crypto


async def declare_exchanges(channel: AbstractChannel) -> None:
    """The mesh's two exchanges; every service declares them, declaring is idempotent."""
    await channel.declare_exchange(EVENTS_EXCHANGE, ExchangeType.TOPIC, durable=True)
    await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True)


async def declare_work_queue(
    channel: AbstractChannel, name: str, *, bindings: Sequence[str], delivery_limit: int
) -> AbstractQueue:
    """A durable quorum queue whose failures go to `<name>.dlq` through `mesh.dlx`.

    A message is dead-lettered when it is rejected without requeue (malformed) or when it has
    been delivered `delivery_limit` times without an ack (a handler that keeps failing).
    At-least-once dead-lettering keeps a message in the queue until the DLQ has confirmed it.
    """
    dead_letters = await channel.declare_queue(
        f"{name}.dlq", durable=True, arguments={"x-queue-type": "quorum"}
    )
    await dead_letters.bind(DEAD_LETTER_EXCHANGE, routing_key=name)
    queue = await channel.declare_queue(
        name,
        durable=True,
        arguments={
            "x-queue-type": "quorum",
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-dead-letter-routing-key": name,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    for routing_key in bindings:
        await queue.bind(EVENTS_EXCHANGE, routing_key=routing_key)
    return queue


class Broker:
    """The process's connection, a publishing channel (confirms, returns raise) and consuming
    channels; everything declared through it is restored by aio-pika after a reconnect."""

    def __init__(self, url: str, *, connection_name: str) -> None:
        self._url = url
        self._connection_name = connection_name
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background; returns at once."""
        self._task = asyncio.create_task(self._connect(), name="broker-connect")

    async def _connect(self) -> None:
        attempt = 0
        while True:
            try:
                connection = await aio_pika.connect_robust(
                    self._url,
                    client_properties={"connection_name": self._connection_name},
                    timeout=5,
                )
                break
            except (OSError, aio_pika.exceptions.AMQPError, TimeoutError) as exc:
                delay = backoff_delay(attempt)
                attempt += 1
                logger.warning("broker not reachable (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        self._connection = connection
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_exchanges(channel)
        self._publish_channel = channel
        self._connected.set()
        logger.info("connected to the broker")

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def is_connected(self) -> bool:
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    async def ready(self) -> None:
        """Readiness check."""
        if not self.is_connected:
            raise BrokerUnavailableError("not connected to RabbitMQ")

    @property
    def publish_channel(self) -> AbstractChannel:
        if self._publish_channel is None or not self.is_connected:
            raise BrokerUnavailableError("not connected to RabbitMQ")
        return self._publish_channel

    async def channel(self, *, prefetch: int) -> AbstractChannel:
        """A new channel (for one consumer) with its own prefetch window."""
        await self.wait_connected()
        assert self._connection is not None
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        return channel

    async def declare(self, declare: Declare) -> None:
        """Run a topology declaration on the publishing channel once connected."""
        await self.wait_connected()
        assert self._publish_channel is not None
        await declare(self._publish_channel)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
