"""The messaging part of a service's lifespan: broker connection, readiness, outbox relay."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from meshkit.app import readiness_checks
from meshkit.db import Database
from meshkit.messaging.broker import Broker
from meshkit.messaging.outbox import Outbox
from meshkit.messaging.relay import OutboxRelay
from meshkit.messaging.settings import MessagingSettings


@asynccontextmanager
async def broker_lifespan(app: FastAPI, settings: MessagingSettings) -> AsyncIterator[Broker]:
    """Connects in the background (the service starts while the broker is down) and reports
    the broker in `/readyz`; closes the connection last, after consumers and relay stopped."""
    broker = Broker(
        settings.rabbitmq_url, connection_name=f"{settings.service_name} pid {os.getpid()}"
    )
    broker.start()
    readiness_checks(app)["broker"] = broker.ready
    app.state.broker = broker
    try:
        yield broker
    finally:
        await broker.close()


@asynccontextmanager
async def relay_lifespan(
    app: FastAPI, settings: MessagingSettings, broker: Broker, outbox: Outbox, *, start: bool = True
) -> AsyncIterator[OutboxRelay]:
    """This process's outbox relay, which the units of work of its requests wake
    (`meshkit.unit_of_work`); on stop, the batch in flight is finished first. With
    `start=False` the caller starts it, e.g. once the queue its events go to is bound."""
    database: Database = app.state.database
    relay = OutboxRelay(
        database=database, outbox=outbox, broker=broker, settings=settings.relay_settings()
    )
    if start:
        relay.start()
    app.state.outbox_relay = relay
    try:
        yield relay
    finally:
        await relay.stop()


@asynccontextmanager
async def publisher_lifespan(
    app: FastAPI, settings: MessagingSettings, outbox: Outbox
) -> AsyncIterator[OutboxRelay]:
    """The broker connection and this process's relay of `outbox`: what a service that only
    publishes needs."""
    async with (
        broker_lifespan(app, settings) as broker,
        relay_lifespan(app, settings, broker, outbox) as relay,
    ):
        yield relay
