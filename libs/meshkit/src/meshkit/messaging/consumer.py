"""Consuming events in batches: acks after the handler's work is committed, and a clear path to
the dead-letter queue for what cannot be processed.

Messages that arrive while a batch is being handled form the next batch (up to `max_batch`),
so a busy queue is stored with one statement per batch and acknowledged with one ack, while a
lone message is handled at once. The handler gets the whole batch; if it fails, every message
of the batch is handled again on its own, so one message that cannot be processed takes only
itself to the dead-letter queue:

- A message that is not a valid event (or whose data the handler rejects as malformed) is
  rejected without requeue: the queue dead-letters it straight to `<queue>.dlq`.
- While the database is unavailable, the batch is kept (not requeued: that would spend the
  delivery limit) and tried again after growing pauses.
- A handler that fails otherwise (a defect, a constraint the event breaks) has the message
  requeued after a short, growing pause; the quorum queue counts deliveries and dead-letters it
  at `x-delivery-limit`, so a poison message never loops forever.
- Stopping cancels the subscription first, then waits for the batch in flight to finish;
  what was not handled yet is redelivered. A stop ends the consumer's pauses at once, and does
  not wait for a lost connection to come back: a batch kept through a database outage is left
  to the broker to deliver again, unsettled (it spends no delivery).
- A batch whose channel was lost with the connection cannot be settled; the broker delivers it
  again once aio-pika has restored the connection and the subscription.

Each message is processed in a `process <queue>` span under the trace context in its headers
(propagated by hand, docs/events.md), or in that context itself when the caller's trace was not
sampled (a span would record nothing); a batch's statements run in its first message's span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from opentelemetry import trace
from opentelemetry.trace import Span, StatusCode
from pydantic import ValidationError

from meshkit.db import is_database_unavailable
from meshkit.messaging.broker import BROKER_DOWN_ERRORS
from meshkit.messaging.events import TRACE_HEADERS, CloudEvent
from meshkit.messaging.metrics import consumed_messages, message_attributes, process_duration
from meshkit.messaging.tracing import context_from, start_process_span, trace_carrier
from meshkit.retry import Retry
from meshkit.telemetry import metrics_enabled, sampled_out, tracing_enabled

logger = logging.getLogger("meshkit.messaging.consumer")


@dataclass(frozen=True, slots=True)
class Delivery:
    """An event as the handler gets it, with the trace context it is processed in: what an
    outbox row written for it carries on (`outbox_values(event, trace=delivery.trace)`)."""

    event: CloudEvent
    trace: Mapping[str, str]


Handler = Callable[[Sequence[Delivery]], Awaitable[None]]

_MAX_RETRY_DELAY = 10.0  # seconds at most before a failed message is requeued
_OUTAGE_RETRY_CAP = 2.0  # seconds between tries of a batch kept while the database is away
_CANCEL_TIMEOUT = 2.0  # seconds a stop waits for the broker to confirm a cancelled subscription


class MalformedEventError(ValueError):
    """Raise from a handler when the event can never be processed as it is (goes to the DLQ)."""


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How many times the queue delivered this message before (quorum queues count it)."""
    value = (message.headers or {}).get("x-delivery-count", 0)
    return int(value) if isinstance(value, int | str) and str(value).isdigit() else 0


@dataclass(slots=True)
class _Received:
    message: AbstractIncomingMessage
    span: Span
    delivery: Delivery | None = None  # None: not a valid event
    outcome: str | None = None  # the error type, if it failed


class EventConsumer:
    def __init__(
        self,
        queue: AbstractQueue,
        handler: Handler,
        *,
        retry_delay: float = 0.5,
        max_batch: int = 100,
    ) -> None:
        self._queue = queue
        self._handler = handler
        self._retry_delay = retry_delay
        self._max_batch = max_batch
        self._tag: str | None = None
        self._arrived: list[AbstractIncomingMessage] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        # Kept messages spend nothing by waiting: look again every few seconds at most.
        self._outage_retry = Retry(
            on=is_database_unavailable,
            base=retry_delay,
            cap=_OUTAGE_RETRY_CAP,
            stop=self._stopping,
            logger=logger,
            what=f"database unavailable; messages of {queue.name} kept",
        )

    async def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name=f"consume {self._queue.name}")
        self._tag = await self._queue.consume(self._on_message)

    async def stop(self, *, grace_seconds: float = 10.0) -> None:
        """Stop receiving, then let the batch in flight finish (unacked ones are redelivered)."""
        self._stopping.set()
        if self._tag is not None:
            if self._queue.channel.is_closed:
                # Lost with the connection: there is no subscription to cancel, and aio-pika
                # would wait for the connection to come back before sending the cancel.
                logger.info("consumer of %s stops without its channel", self._queue.name)
            else:
                try:
                    # Bounded as a whole: a cancel also waits for a reconnection in progress.
                    await asyncio.wait_for(
                        self._queue.cancel(self._tag, timeout=_CANCEL_TIMEOUT), _CANCEL_TIMEOUT
                    )
                except Exception as exc:  # the channel may be gone meanwhile
                    logger.info("consumer cancel on %s failed: %r", self._queue.name, exc)
        self._arrived.clear()  # not started: the broker redelivers them
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_seconds)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        self._arrived.append(message)
        self._idle.clear()
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            # Deliveries already read from the socket join this batch.
            await asyncio.sleep(0)
            self._wake.clear()
            while self._arrived:
                batch = self._arrived[: self._max_batch]
                del self._arrived[: self._max_batch]
                try:
                    await self._process(batch)
                except BROKER_DOWN_ERRORS as exc:
                    logger.warning(
                        "%d message(s) of %s not settled: the connection to the broker is "
                        "lost (%r); the broker delivers them again",
                        len(batch),
                        self._queue.name,
                        exc,
                    )
            self._idle.set()

    async def _process(self, messages: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        received = [self._receive(message) for message in messages]
        try:
            valid = [r for r in received if r.delivery is not None]
            for item in received:
                if item.delivery is None:
                    await item.message.reject(requeue=False)
            if valid:
                await self._handle(valid)
        finally:
            duration = time.perf_counter() - started
            for item in received:
                item.span.end()
            if metrics_enabled():
                self._count(received, duration)

    def _count(self, received: list[_Received], duration: float) -> None:
        """One count per event type and outcome of the batch, not one per message."""
        outcomes = Counter(
            (item.message.exchange or "", item.message.routing_key or "", item.outcome)
            for item in received
        )
        for (exchange, routing_key, outcome), count in outcomes.items():
            attributes = message_attributes(
                exchange, routing_key, subscription=self._queue.name, error=outcome
            )
            consumed_messages.add(count, attributes)
            for _ in range(count):
                process_duration.record(duration, attributes)

    def _receive(self, message: AbstractIncomingMessage) -> _Received:
        headers = message.headers or {}
        parent = context_from(headers)
        if tracing_enabled() and not sampled_out(parent):
            span = start_process_span(
                queue=self._queue.name,
                exchange=message.exchange or "",
                routing_key=message.routing_key or "",
                message_id=message.message_id,
                parent=parent,
            )
            carrier = trace_carrier(span)
        else:
            # No span to make (tracing is off, or the caller's trace is not sampled): the
            # message's own context is current and travels on, as the relay passes it on.
            span = trace.get_current_span(parent)
            carrier = {k: str(headers[k]) for k in TRACE_HEADERS if isinstance(headers.get(k), str)}
        item = _Received(message, span)
        try:
            event = CloudEvent.model_validate_json(message.body)
        except ValidationError as exc:
            self._malformed(item, exc)
            return item
        item.delivery = Delivery(event, carrier)
        return item

    def _malformed(self, item: _Received, exc: Exception) -> None:
        item.span.set_status(StatusCode.ERROR, "malformed event")
        item.outcome = "malformed"
        logger.error(
            "malformed message %s on %s, dead-lettered: %s",
            item.message.message_id,
            self._queue.name,
            str(exc)[:500],
        )

    async def _handle(self, batch: list[_Received], *, alone: bool = False) -> None:
        """The whole batch at once, acked with one ack; on failure each message on its own."""
        failure = await self._run_handler(batch)
        if failure is None:
            # Every earlier delivery of this channel is settled (batches run one after another);
            # a message handled alone is one of several in flight at once.
            await batch[-1].message.ack(multiple=not alone)
        elif self._stopping.is_set() and is_database_unavailable(failure):
            logger.info(
                "database unavailable while stopping: %d message(s) of %s left to the "
                "broker to deliver again",
                len(batch),
                self._queue.name,
            )
        elif len(batch) == 1:
            await self._settle_failure(batch[0], failure)
        else:
            # Which one failed? Each alone: the others are stored, the culprit retried.
            await asyncio.gather(*(self._handle([item], alone=True) for item in batch))

    async def _run_handler(self, batch: list[_Received]) -> Exception | None:
        """Runs the handler on `batch`; the exception it ended with, if any. While the failure
        is the database being unavailable, the messages are kept and the batch tried again
        after a growing pause: requeued, each delivery would spend the delivery limit, and a
        long enough outage would dead-letter every message in flight. A stop during the
        outage leaves them unsettled, for the broker to deliver again."""
        deliveries = [item.delivery for item in batch if item.delivery is not None]
        try:
            await self._outage_retry(self._call_handler, deliveries, batch[0].span)
        except Exception as exc:
            return exc
        return None

    async def _call_handler(self, deliveries: list[Delivery], span: Span) -> None:
        with trace.use_span(span, end_on_exit=False):
            await self._handler(deliveries)

    async def _settle_failure(self, item: _Received, exc: Exception) -> None:
        """Handling `item` alone raised `exc`: dead-letter it, or requeue it after a pause."""
        if isinstance(exc, MalformedEventError):
            self._malformed(item, exc)
            await item.message.reject(requeue=False)
            return
        item.span.record_exception(exc)
        item.span.set_status(StatusCode.ERROR, type(exc).__name__)
        item.outcome = type(exc).__name__
        attempt = delivery_count(item.message)
        logger.error(
            "handling %s on %s failed (delivery %d); requeued",
            item.message.message_id,
            self._queue.name,
            attempt + 1,
            exc_info=exc,
        )
        # Immediate requeues would spend the delivery limit in milliseconds while e.g. the
        # database restarts; pausing gives transient failures a chance (a stop ends it).
        with contextlib.suppress(TimeoutError):
            pause = min(_MAX_RETRY_DELAY, self._retry_delay * 2**attempt)
            await asyncio.wait_for(self._stopping.wait(), pause)
        await item.message.nack(requeue=True)
