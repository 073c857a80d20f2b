"""All SQL of the notifications service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from meshkit import messaging
from meshkit.pagination import PageParams, paginate_newest_first
from notifications_service.models import Notification, outbox


async def add_notification(
    session: AsyncSession, *, user_id: uuid.UUID, type_: str, message: str, event_id: uuid.UUID
) -> Notification | None:
    """Inserts the notification of an event; None if that event already has one (the unique
    constraint on `event_id` decides, so concurrent redeliveries cannot both insert)."""
    result = await session.execute(
        _INSERT_NOTIFICATION,
        {
            "id": uuid.uuid4(),
            "user_id": user_id,
            "type": type_,
            "message": message,
            "event_id": event_id,
        },
    )
    return result.scalar_one_or_none()


# Built once, values as parameters: the statement's cache key is computed once, not per event.
_INSERT_NOTIFICATION = (
    insert(Notification)
    .on_conflict_do_nothing(index_elements=[Notification.event_id])
    .returning(Notification)
)


async def list_notifications(
    session: AsyncSession, *, user_id: uuid.UUID, params: PageParams
) -> Sequence[Notification]:
    statement = paginate_newest_first(
        select(Notification).where(Notification.user_id == user_id),
        created_at=Notification.created_at,
        id_=Notification.id,
        params=params,
    )
    notifications: Sequence[Notification] = (await session.execute(statement)).scalars().all()
    return notifications


async def mark_read(
    session: AsyncSession, *, notification_id: uuid.UUID, user_id: uuid.UUID
) -> Notification | None:
    result = await session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.user_id == user_id)
        .values(read=True)
        .returning(Notification)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def add_event(session: AsyncSession, event: messaging.CloudEvent) -> None:
    await messaging.add_event(session, outbox, event)
