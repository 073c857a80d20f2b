"""Live delivery: every process subscribes to `notification.created` with its own exclusive,
auto-deleted queue and hands each notification to the open streams of its user in *this*
process. With several replicas or workers each one delivers to its own clients.

Each user may hold `STREAM_LIMIT_PER_USER` streams (SSE and WebSocket together) in one
process: the gateway caps them across every replica already; this cap is the service's own
defence when it is reached some other way, or while the gateway counts per process."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal

from aio_pika.abc import AbstractChannel, AbstractQueue

from meshkit.messaging import EVENTS_EXCHANGE, Delivery, MalformedEventError
from meshkit.resources import count_refusal, watch_streams
from notifications_service.events import NOTIFICATION_CREATED
from notifications_service.schemas import NotificationRead

logger = logging.getLogger("notifications.push")


# Put in a stream's queue when the process stops: the stream ends.
END_OF_STREAM = None
Subscription = asyncio.Queue[NotificationRead | None]
StreamKind = Literal["sse", "websocket"]


class TooManyStreamsError(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"one user may hold {limit} streams at once here")
        self.limit = limit


class PushHub:
    """The open SSE streams and WebSockets of this process, by user."""

    def __init__(self, *, buffer: int = 100, per_user_limit: int = 0) -> None:
        self._buffer = buffer
        self._per_user_limit = per_user_limit  # 0: no cap
        self._closed = False
        self._subscribers: defaultdict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self._open: dict[str, int] = {"sse": 0, "websocket": 0}
        watch_streams(self)

    @property
    def max_streams(self) -> None:
        return None  # no cap of the process's own: the gateway has it

    def open_streams(self) -> Mapping[str, int]:
        return dict(self._open)

    @contextmanager
    def subscribe(self, user_id: uuid.UUID, kind: StreamKind = "sse") -> Iterator[Subscription]:
        """A queue of the user's new notifications; `END_OF_STREAM` when the process stops.
        `TooManyStreamsError` when the user already holds the cap of streams here."""
        held = self._subscribers.get(user_id)
        if self._per_user_limit and held is not None and len(held) >= self._per_user_limit:
            count_refusal("stream_user_limit")
            raise TooManyStreamsError(self._per_user_limit)
        queue: Subscription = asyncio.Queue(self._buffer + 1)
        if self._closed:
            queue.put_nowait(END_OF_STREAM)
        self._subscribers[user_id].add(queue)
        self._open[kind] += 1
        try:
            yield queue
        finally:
            self._open[kind] -= 1
            self._subscribers[user_id].discard(queue)
            if not self._subscribers[user_id]:
                del self._subscribers[user_id]

    def close(self) -> None:
        """Ends every stream, so a stopping server is not held open by long-lived streams
        (clients reconnect to another replica and catch up with the list)."""
        if self._closed:
            return
        self._closed = True
        for queues in self._subscribers.values():
            for queue in queues:
                # One slot is kept free for this marker (see `subscribe`).
                queue.put_nowait(END_OF_STREAM)

    def publish(self, notification: NotificationRead) -> None:
        for queue in self._subscribers.get(notification.user_id, ()):
            if queue.qsize() >= self._buffer:
                # A client that does not read must not hold memory or other clients up; it
                # can catch up with GET /api/notifications.
                logger.warning("push buffer full for a stream of user %s", notification.user_id)
            else:
                queue.put_nowait(notification)

    async def handle(self, deliveries: Sequence[Delivery]) -> None:
        """Handler of this process's `notification.created` subscription."""
        if not self._subscribers:
            return  # nobody listens in this process: nothing to read
        for delivery in deliveries:
            try:
                notification = NotificationRead.model_validate(delivery.event.data)
            except ValueError as exc:
                raise MalformedEventError(str(exc)) from exc
            self.publish(notification)


async def declare_push_queue(channel: AbstractChannel) -> AbstractQueue:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(EVENTS_EXCHANGE, routing_key=NOTIFICATION_CREATED)
    return queue
