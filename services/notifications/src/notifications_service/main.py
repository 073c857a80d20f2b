"""The notifications service's ASGI app.

Served by
`gunicorn --config python:meshkit.gunicorn_conf 'notifications_service.main:create_app()'`.
Each worker runs, in its lifespan: the consumer of the `notifications` queue (competing with the
other workers and replicas), its own `notification.created` subscription feeding its SSE and
WebSocket clients, and an outbox relay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from meshkit.app import create_service_app, readiness_checks
from meshkit.db import Database
from meshkit.messaging import (
    Broker,
    Delivery,
    EventConsumer,
    OutboxRelay,
    broker_lifespan,
    declare_work_queue,
    relay_lifespan,
)
from meshkit.unit_of_work import UnitOfWork
from notifications_service import service
from notifications_service.events import handlers
from notifications_service.models import outbox
from notifications_service.push import PushHub, declare_push_queue
from notifications_service.routes import routers
from notifications_service.settings import NotificationsSettings
from notifications_service.shutdown import on_termination

logger = logging.getLogger("notifications")


def create_app(settings: NotificationsSettings | None = None) -> FastAPI:
    settings = settings or NotificationsSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub = PushHub(buffer=settings.push_buffer, per_user_limit=settings.stream_limit_per_user)
        app.state.push_hub = hub
        async with (
            broker_lifespan(app, settings) as broker,
            relay_lifespan(app, settings, broker, outbox, start=False) as relay,
        ):
            processing = EventProcessing(
                settings=settings, broker=broker, database=app.state.database, relay=relay, hub=hub
            )
            processing.start()
            readiness_checks(app)["consumer"] = processing.ready
            try:
                with on_termination(hub.close):
                    yield
            finally:
                hub.close()
                await processing.stop()

    return create_service_app(
        settings,
        title="Notifications service",
        description="Notifications of the caller, stored from events and pushed over SSE "
        "and WebSocket.",
        routers=routers,
        lifespan=lifespan,
    )


class EventProcessing:
    """This process's consumers, started once the broker is connected (in the background: the
    service answers `/healthz` meanwhile, `/readyz` reports the broker), and then its relay."""

    def __init__(
        self,
        *,
        settings: NotificationsSettings,
        broker: Broker,
        database: Database,
        relay: OutboxRelay,
        hub: PushHub,
    ) -> None:
        self._settings = settings
        self._broker = broker
        self._database = database
        self._relay = relay
        self._hub = hub
        self._consumers: list[EventConsumer] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._start(), name="notifications-events")
        self._task.add_done_callback(_log_failure)

    async def ready(self) -> None:
        """Readiness check: the consumers are subscribed."""
        task = self._task
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            raise RuntimeError("not consuming")

    async def _start(self) -> None:
        settings = self._settings
        await self._broker.wait_connected()
        work_channel = await self._broker.channel(prefetch=settings.consumer_prefetch)
        queue = await declare_work_queue(
            work_channel,
            settings.events_queue,
            bindings=handlers.bindings,
            delivery_limit=settings.delivery_limit,
        )
        push_channel = await self._broker.channel(prefetch=settings.consumer_prefetch)
        push_queue = await declare_push_queue(push_channel)
        for consumer in (
            EventConsumer(
                queue,
                self._handle,
                retry_delay=settings.retry_delay_seconds,
                max_batch=max(1, settings.consumer_prefetch // 2),
            ),
            EventConsumer(push_queue, self._hub.handle),
        ):
            await consumer.start()
            self._consumers.append(consumer)
        # Started after the push queue is bound, so `notification.created` is routable.
        self._relay.start()
        logger.info("consuming %s", settings.events_queue)

    async def _handle(self, deliveries: Sequence[Delivery]) -> None:
        work = UnitOfWork(self._database, self._relay)
        await service.handle_events(work=work, deliveries=deliveries)

    async def stop(self) -> None:
        """Stop receiving and finish messages in flight (the relay's lifespan stops it next)."""
        if self._task is not None:
            self._task.cancel()  # no effect once it has started them
            await asyncio.gather(self._task, return_exceptions=True)
        for consumer in self._consumers:
            await consumer.stop()


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        # E.g. the queue exists with other arguments; /readyz keeps reporting "consumer".
        logger.error("could not start consuming", exc_info=task.exception())
