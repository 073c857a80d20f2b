"""One RabbitMQ connection per process, kept alive by aio-pika's robust connection.

`connect_robust` reconnects after a lost connection but fails on the *first* attempt; a service
must start (and answer `/healthz`) while the broker is still down, so the first connection is
retried here in the background (`meshkit.retry`), and readiness reports the broker until then.
Publishing and consuming use separate channels, so a slow consumer never holds up confirms.

A lost connection is logged here, once, as a warning, and so is its recovery; what aio-pika and
aiormq log about the same outage is quietened by `meshkit.logging`. An outage that has not ended
after `outage_alert_seconds` is logged as an error: a broker restart is over by then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)

from meshkit.concurrency import first_completed
from meshkit.messaging.events import DEAD_LETTER_EXCHANGE, EVENTS_EXCHANGE
from meshkit.retry import Retry

logger = logging.getLogger("meshkit.messaging.broker")


class BrokerUnavailableError(ConnectionError):
    """The broker is not connected (yet, or right now)."""


# Raised when the connection or channel is gone: the broker's fault, not the message's.
BROKER_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    BrokerUnavailableError,
    ConnectionError,
    TimeoutError,
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
)


# The first connection; a closing broker cancels it, also mid-backoff.
_CONNECT_RETRY = Retry(
    on=(OSError, aio_pika.exceptions.AMQPError, TimeoutError),
    base=0.25,
    cap=15.0,
    logger=logger,
    what="broker not reachable",
)


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

    def __init__(
        self, url: str, *, connection_name: str, outage_alert_seconds: float = 60.0
    ) -> None:
        self._url = url
        self._connection_name = connection_name
        self._outage_alert_seconds = outage_alert_seconds
        self._connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._connected = asyncio.Event()
        self._closed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost_at: float | None = None  # when the connection was lost, until restored
        self._outage_alert: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Connect in the background; returns at once."""
        self._task = asyncio.create_task(self._connect(), name="broker-connect")
        self._watch_outage(time.monotonic())

    async def _connect(self) -> None:
        self._connection = connection = await _CONNECT_RETRY(self._connect_once)
        connection.close_callbacks.add(self._on_connection_lost)
        connection.reconnect_callbacks.add(self._on_reconnected)
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await declare_exchanges(channel)
        self._publish_channel = channel
        self._connected.set()
        self._end_outage_watch()
        logger.info("connected to the broker")

    async def _connect_once(self) -> AbstractRobustConnection:
        return await aio_pika.connect_robust(
            self._url, client_properties={"connection_name": self._connection_name}, timeout=5
        )

    def _on_connection_lost(self, _: object, exc: BaseException | None = None) -> None:
        if self._closed.is_set() or self._lost_at is not None:
            return  # our own close, or the same outage
        self._lost_at = time.monotonic()
        reason = (str(exc) or type(exc).__name__) if exc is not None else "closed"
        logger.warning("connection to the broker lost (%s); reconnecting", reason)
        self._watch_outage(self._lost_at)

    def _on_reconnected(self, _: object) -> None:
        """Called by aio-pika once the connection and every channel on it are restored."""
        lost_at, self._lost_at = self._lost_at, None
        self._end_outage_watch()
        if lost_at is not None:
            logger.warning("reconnected to the broker after %.1fs", time.monotonic() - lost_at)

    def _watch_outage(self, since: float) -> None:
        self._end_outage_watch()
        self._outage_alert = asyncio.create_task(
            self._alert_if_still_down(since), name="broker-outage-alert"
        )

    def _end_outage_watch(self) -> None:
        if self._outage_alert is not None:
            self._outage_alert.cancel()
            self._outage_alert = None

    async def _alert_if_still_down(self, since: float) -> None:
        """A restart is over in seconds; an outage that goes on needs a person."""
        await asyncio.sleep(self._outage_alert_seconds)
        logger.error(
            "broker unreachable for %.0fs; still trying to connect", time.monotonic() - since
        )

    async def wait_connected(self, *, unless: asyncio.Event | None = None) -> bool:
        """Waits for the first connection (aio-pika restores later ones itself). False if
        `unless` is set first; raises `BrokerUnavailableError` if the broker is closed first,
        so that nothing waits on a broker its process has stopped."""
        if self._connected.is_set():
            return True
        events = [self._connected, self._closed] + ([unless] if unless is not None else [])
        await first_completed(*(event.wait() for event in events))
        if self._connected.is_set():
            return True
        if self._closed.is_set():
            raise BrokerUnavailableError("the broker connection is closed")
        return False

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

    async def close(self) -> None:
        """Stops connecting (at once, also mid-backoff or mid-reconnect) and closes the
        connection."""
        self._closed.set()
        self._end_outage_watch()
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._connection is not None:
            await self._connection.close()
