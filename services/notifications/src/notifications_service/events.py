"""The events this service reads (its own copy of their payloads) and the one it publishes."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, ValidationError

from meshkit.messaging import CloudEvent, MalformedEventError
from notifications_service.schemas import NotificationRead

SOURCE = "notifications"
USER_REGISTERED = "user.registered"
ORDER_CREATED = "order.created"
ORDER_CANCELLED = "order.cancelled"
NOTIFICATION_CREATED = "notification.created"
# What the notifications queue is bound to.
SUBSCRIBED = (USER_REGISTERED, "order.*")


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


def _money(cents: int) -> str:
    return f"{cents // 100}.{cents % 100:02d}"


def describe(event: CloudEvent) -> Described:
    """The notification an event produces; MalformedEventError if it cannot produce one."""
    try:
        user_id = uuid.UUID(event.subject)
        if event.type == USER_REGISTERED:
            user = UserRegistered.model_validate(event.data)
            return Described(user_id=user_id, message=f"Welcome to the mesh, {user.name}!")
        if event.type in (ORDER_CREATED, ORDER_CANCELLED):
            order = OrderChanged.model_validate(event.data)
            if order.user_id != user_id:
                raise MalformedEventError("the order's user is not the event's subject")
            verb = "was placed" if event.type == ORDER_CREATED else "was cancelled"
            total = _money(order.total_cents)
            return Described(
                user_id=user_id, message=f"Your order {str(order.id)[:8]} {verb} (total {total})."
            )
    except (ValueError, ValidationError) as exc:
        raise MalformedEventError(f"{event.type} {event.id}: {exc}") from exc
    raise MalformedEventError(f"no notification for events of type {event.type}")


def notification_created(notification: NotificationRead) -> CloudEvent:
    return CloudEvent(
        source=SOURCE,
        type=NOTIFICATION_CREATED,
        subject=str(notification.user_id),
        data=notification.model_dump(mode="json"),
    )
