"""Events over RabbitMQ: CloudEvents envelope, transactional outbox and relay, consumers."""

from meshkit.messaging.broker import Broker, declare_exchanges, declare_work_queue
from meshkit.messaging.consumer import Delivery, EventConsumer, MalformedEventError
from meshkit.messaging.events import EVENTS_EXCHANGE, CloudEvent, to_message
from meshkit.messaging.handlers import EventHandlers
from meshkit.messaging.lifespan import broker_lifespan, publisher_lifespan, relay_lifespan
from meshkit.messaging.outbox import Outbox, OutboxRow, outbox_arrays
from meshkit.messaging.relay import OutboxRelay
from meshkit.messaging.settings import MessagingSettings

__all__ = [
    "EVENTS_EXCHANGE",
    "Broker",
    "CloudEvent",
    "Delivery",
    "EventConsumer",
    "EventHandlers",
    "MalformedEventError",
    "MessagingSettings",
    "Outbox",
    "OutboxRelay",
    "OutboxRow",
    "broker_lifespan",
    "declare_exchanges",
    "declare_work_queue",
    "outbox_arrays",
    "publisher_lifespan",
    "relay_lifespan",
    "to_message",
]
