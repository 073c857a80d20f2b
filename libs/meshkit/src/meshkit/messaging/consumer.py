"""Consuming events: manual acks after the handler's work is committed, and a clear path to the
dead-letter queue for what cannot be processed.

- A message that is not a valid event (or whose data the handler rejects as malformed) is
  rejected without requeue: the queue dead-letters it straight to `<queue>.dlq`.
- A handler that fails otherwise (database down, a bug) has the message requeued after a short,
  growing pause; the quorum queue counts deliveries and dead-letters it at `x-delivery-limit`,
  so a poison message never loops forever.
- Stopping cancels the subscription first, then waits for the messages in flight to finish.

Each message is processed in a `process <queue>` span whose parent is the trace context in the
message headers (propagated by hand: aio-pika's instrumentation does not do it for every
consume style, and we want the same behaviour for all of them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from opentelemetry.trace import StatusCode
from pydantic import ValidationError

from meshkit.messaging.events import CloudEvent
from meshkit.messaging.metrics import consumed_messages, process_duration
from meshkit.messaging.tracing import process_span

logger = logging.getLogger("meshkit.messaging.consumer")

Handler = Callable[[CloudEvent], Awaitable[None]]


class MalformedEventError(ValueError):
    """Raise from a handler when the event can never be processed as it is (goes to the DLQ)."""


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the queue delivered this message before (quorum queues count it)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


class EventConsumer:
    def __init__(
        self,
        queue: AbstractQueue,
        handler: Handler,
        *,
        retry_delay: float = 0.5,
        max_retry_delay: float = 10.0,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._retry_delay = retry_delay
        self._max_retry_delay = max_retry_delay
        self._tag: str | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._stopping = False

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message)

    async def stop(self, *, grace_seconds: float = 10.0) -> None:
        """Stop receiving, then let the messages in flight finish (unacked ones are redelivered)."""
        self._stopping = True
        if self._tag is not None:
            try:
                await self._queue.cancel(self._tag, timeout=2)
            except Exception as exc:  # the channel may already be gone
                logger.info("consumer cancel on %s failed: %s", self._queue.name, exc)
        if self._in_flight:
            await asyncio.wait(self._in_flight, timeout=grace_seconds)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._in_flight.add(task)
        try:
            await self._process(message)
        finally:
            self._in_flight.discard(task)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        started = time.perf_counter()
        outcome = await self._process_traced(message)
        attributes = {
            "messaging.system": "rabbitmq",
            "messaging.destination.subscription.name": self._queue.name,
            "messaging.rabbitmq.destination.routing_key": message.routing_key or "",
        }
        if outcome is not None:
            attributes["error.type"] = outcome
        consumed_messages.add(1, attributes)
        process_duration.record(time.perf_counter() - started, attributes)

    async def _process_traced(self, message: AbstractIncomingMessage) -> str | None:
        """Handles, then acks / dead-letters / requeues; returns the error type, if any."""
        queue = self._queue.name
        with process_span(
            queue=queue,
            exchange=message.exchange or "",
            routing_key=message.routing_key or "",
            message_id=message.message_id,
            headers=message.headers,
        ) as span:
            try:
                event = CloudEvent.model_validate_json(message.body)
                await self._handler(event)
            except (ValidationError, MalformedEventError) as exc:
                span.set_status(StatusCode.ERROR, "malformed event")
                logger.error(
                    "malformed message %s on %s, dead-lettered: %s",
                    message.message_id,
                    queue,
                    str(exc)[:500],
                )
                await message.reject(requeue=False)
                return "malformed"
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(StatusCode.ERROR, type(exc).__name__)
                attempt = delivery_count(message)
                logger.exception(
                    "handling %s on %s failed (delivery %d); requeued",
                    message.message_id,
                    queue,
                    attempt + 1,
                )
                if not self._stopping:
                    # Immediate requeues would spend the delivery limit in milliseconds while
                    # e.g. the database restarts; pausing gives transient failures a chance.
                    delay = min(self._max_retry_delay, self._retry_delay * 2**attempt)
                    await asyncio.sleep(delay)
                await message.nack(requeue=True)
                return type(exc).__name__
            await message.ack()
            return None
