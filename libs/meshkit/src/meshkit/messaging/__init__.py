"""Events over RabbitMQ: CloudEvents envelope, transactional outbox and relay, consumers."""

from meshkit.messaging.broker import (
    Broker,
    BrokerUnavailableError,
    declare_exchanges,
    declare_work_queue,
)
from meshkit.messaging.consumer import EventConsumer, Handler, MalformedEventError
from meshkit.messaging.events import (
    CLOUDEVENTS_CONTENT_TYPE,
    DEAD_LETTER_EXCHANGE,
    EVENTS_EXCHANGE,
    CloudEvent,
    to_message,
)
from meshkit.messaging.outbox import (
    DROP_NOTIFY_TRIGGER_DDL,
    NOTIFY_TRIGGER_DDL,
    OutboxRelay,
    RelaySettings,
    add_event,
    outbox_table,
)
from meshkit.messaging.settings import MessagingSettings

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "DEAD_LETTER_EXCHANGE",
    "DROP_NOTIFY_TRIGGER_DDL",
    "EVENTS_EXCHANGE",
    "NOTIFY_TRIGGER_DDL",
    "Broker",
    "BrokerUnavailableError",
    "CloudEvent",
    "EventConsumer",
    "Handler",
    "MalformedEventError",
    "MessagingSettings",
    "OutboxRelay",
    "RelaySettings",
    "add_event",
    "declare_exchanges",
    "declare_work_queue",
    "outbox_table",
    "to_message",
]
