"""The events this service reads (its own copy of their payloads) and the one it publishes."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict

from meshkit.messaging import CloudEvent, EventHandlers, MalformedEventError
from notifications_service.schemas import NotificationRead

SOURCE = "notifications"
USER_REGISTERED = "user.registered"
ORDER_CREATED = "order.created"
ORDER_CANCELLED = "order.cancelled"
NOTIFICATION_CREATED = "notification.created"


class _Payload(BaseModel):
    # Fields other services add later must not break this consumer.
    model_config = ConfigDict(extra="ignore")


class UserRegistered(_Payload):
    id: uuid.UUID
    name: str


class OrderChanged(_Payload):
    id: uuid.UUID
    user_id: uuid.UUID
    total_cents: int


class Described(BaseModel):
    user_id: uuid.UUID
    message: str


# The notification each event produces; its bindings are the notifications queue's. Every order
# event reaches the queue: one without a handler is dead-lettered, not left unroutable (and
# retried) by the orders relay.
handlers: EventHandlers[Described] = EventHandlers(wildcards=("order.*",))


def _user_id(event: CloudEvent) -> uuid.UUID:
    try:
        return uuid.UUID(event.subject)
    except ValueError as exc:
        raise MalformedEventError(f"{event.type} {event.id}: the subject is not a user id") from exc


@handlers.on(USER_REGISTERED, UserRegistered)
def _welcome(event: CloudEvent, user: UserRegistered) -> Described:
    return Described(user_id=_user_id(event), message=f"Welcome to the mesh, {user.name}!")


@handlers.on(ORDER_CREATED, OrderChanged)
def _order_placed(event: CloudEvent, order: OrderChanged) -> Described:
    return _order_notification(event, order, "was placed")


@handlers.on(ORDER_CANCELLED, OrderChanged)
def _order_cancelled(event: CloudEvent, order: OrderChanged) -> Described:
    return _order_notification(event, order, "was cancelled")


def _order_notification(event: CloudEvent, order: OrderChanged, verb: str) -> Described:
    user_id = _user_id(event)
    if order.user_id != user_id:
        raise MalformedEventError(f"{event.type} {event.id}: the order's user is not the subject")
    cents = order.total_cents
    message = f"Your order {str(order.id)[:8]} {verb} (total {cents // 100}.{cents % 100:02d})."
    return Described(user_id=user_id, message=message)


def notification_created(notification: NotificationRead) -> CloudEvent:
    return CloudEvent(
        source=SOURCE,
        type=NOTIFICATION_CREATED,
        subject=str(notification.user_id),
        data=notification.model_dump(mode="json"),
    )
