"""Startup against a broker whose topology disagrees: the service says so in /readyz."""

from __future__ import annotations

import aio_pika
import httpx
from asgi_lifespan import LifespanManager

from meshdev.customers import eventually
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from notifications_service.main import create_app
from notifications_service.settings import NotificationsSettings


async def test_a_queue_declared_with_other_arguments_keeps_the_service_unready(
    settings: NotificationsSettings,
) -> None:
    vhost = await create_vhost("notifications_conflict")
    try:
        connection = await aio_pika.connect(amqp_url(vhost))
        async with connection:
            channel = await connection.channel()
            await channel.declare_queue(settings.events_queue, durable=True)  # a classic queue
        application = create_app(settings.model_copy(update={"rabbitmq_url": amqp_url(vhost)}))
        async with LifespanManager(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://n.test") as client:

                async def unready_because_of_the_consumer() -> bool:
                    response = await client.get("/readyz")
                    detail = response.json().get("detail", "")
                    return response.status_code == 503 and detail == (
                        "Not ready: consumer did not answer."
                    )

                await eventually(unready_because_of_the_consumer)
    finally:
        await delete_vhost(vhost)
