"""Live delivery: every process subscribes to `notification.created` with its own exclusive,
auto-deleted queue and hands each notification to the open streams of its user in *this*
process. With several replicas or workers each one delivers to its own clients."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from aio_pika.abc import AbstractChannel, AbstractQueue

from meshkit.messaging import EVENTS_EXCHANGE, Delivery, MalformedEventError
from notifications_service.events import NOTIFICATION_CREATED
from notifications_service.schemas import NotificationRead

logger = logging.getLogger("notifications.push")


# Put in a stream's queue when the process stops: the stream ends.
END_OF_STREAM = None
Subscription = asyncio.Queue[NotificationRead | None]


class PushHub:
    """The open SSE streams and WebSockets of this process, by user."""

    def __init__(self, *, buffer: int = 100) -> None:
        self._buffer = buffer
        self._closed = False
        self._subscribers: defaultdict[uuid.UUID, set[Subscription]] = defaultdict(set)

    @contextmanager
    def subscribe(self, user_id: uuid.UUID) -> Iterator[Subscription]:
        """A queue of the user's new notifications; `END_OF_STREAM` when the process stops."""
        queue: Subscription = asyncio.Queue(self._buffer + 1)
        if self._closed:
            queue.put_nowait(END_OF_STREAM)
        self._subscribers[user_id].add(queue)
        try:
            yield queue
        finally:
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
                continue
            try:
                queue.put_nowait(notification)
            except asyncio.QueueFull:  # pragma: no cover - guarded by the size check above
                logger.warning("push buffer full for a stream of user %s", notification.user_id)

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
