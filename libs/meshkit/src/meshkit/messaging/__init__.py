"""Events over RabbitMQ: CloudEvents envelope, transactional outbox and relay, consumers."""

from meshkit.messaging.broker import (
    Broker,
    BrokerUnavailableError,
    declare_exchanges,
    declare_work_queue,
)
from meshkit.messaging.consumer import Delivery, EventConsumer, Handler, MalformedEventError
from meshkit.messaging.events import (
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    CloudEvent,
    event_message,
    to_message,
)
from meshkit.messaging.handlers import EventHandlers
from meshkit.messaging.lifespan import broker_lifespan, publisher_lifespan, relay_lifespan
from meshkit.messaging.outbox import Outbox, OutboxRow, outbox_arrays
from meshkit.messaging.relay import OutboxRelay, RelaySettings
from meshkit.messaging.settings import MessagingSettings

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "DEAD_LETTER_EXCHANGE",
    "EVENTS_EXCHANGE",
    "Broker",
    "BrokerUnavailableError",
    "CloudEvent",
    "Delivery",
    "EventConsumer",
    "EventHandlers",
    "Handler",
    "MalformedEventError",
    "MessagingSettings",
    "Outbox",
    "OutboxRelay",
    "OutboxRow",
    "RelaySettings",
    "broker_lifespan",
    "declare_exchanges",
    "declare_work_queue",
    "event_message",
    "outbox_arrays",
    "publisher_lifespan",
    "relay_lifespan",
    "to_message",
]
