"""Business rules of the notifications service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from meshkit.messaging import Delivery
from meshkit.pagination import Page, PageParams, build_page
from meshkit.problems import NotFoundError
from meshkit.unit_of_work import UnitOfWork
from notifications_service import repository
from notifications_service.events import handlers, notification_created
from notifications_service.schemas import NotificationRead


async def handle_events(*, work: UnitOfWork, deliveries: Sequence[Delivery]) -> None:
    """One notification per event, each stored with its `notification.created` event, the
    whole batch in one statement; the consumer acks only after this returns, i.e. after the
    commit. An event that already has its notification (a redelivery) is skipped."""
    now = datetime.now(UTC)
    notifications = []
    for delivery in deliveries:
        described = handlers.dispatch(delivery.event)  # MalformedEventError: to the DLQ, alone
        notifications.append(
            NotificationRead(
                id=uuid.uuid4(),
                user_id=described.user_id,
                type=delivery.event.type,
                message=described.message,
                event_id=delivery.event.id,
                created_at=now,
                read=False,
            )
        )
    events = [
        work.publish(notification_created(notification), trace=delivery.trace)
        for notification, delivery in zip(notifications, deliveries, strict=True)
    ]
    async with work.connect() as connection:
        await repository.add_notifications(
            connection, [n.model_dump() for n in notifications], events
        )


async def list_notifications(
    *, work: UnitOfWork, user_id: uuid.UUID, params: PageParams
) -> Page[NotificationRead]:
    async with work.connect() as connection:
        rows = await repository.list_notifications(connection, user_id=user_id, params=params)
    return build_page(rows, params=params, to_item=NotificationRead.model_validate)


async def mark_read(
    *, work: UnitOfWork, notification_id: uuid.UUID, user_id: uuid.UUID
) -> NotificationRead:
    async with work.connect() as connection:
        row = await repository.mark_read(
            connection, notification_id=notification_id, user_id=user_id
        )
    if row is None:
        raise NotFoundError("Notification not found.")
    return NotificationRead.model_validate(row)
