"""The events the orders service publishes (routing key = type)."""

from __future__ import annotations

from meshkit.messaging import CloudEvent
from orders_service.schemas import OrderRead

SOURCE = "orders"
ORDER_CREATED = "order.created"
ORDER_CANCELLED = "order.cancelled"


def order_event(event_type: str, order: OrderRead) -> CloudEvent:
    """`data` is the order exactly as the API shows it."""
    return CloudEvent(
        source=SOURCE,
        type=event_type,
        subject=str(order.user_id),
        data=order.model_dump(mode="json"),
    )
