"""Business rules of the notifications service."""

from __future__ import annotations

import logging
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from meshkit.db import Database
from meshkit.messaging import CloudEvent
from meshkit.pagination import Cursor, Page, PageParams, build_page
from meshkit.problems import NotFoundError
from notifications_service import repository
from notifications_service.events import describe, notification_created
from notifications_service.models import Notification
from notifications_service.schemas import NotificationRead

logger = logging.getLogger("notifications")


async def handle_event(*, database: Database, event: CloudEvent) -> None:
    """One notification per event, stored with its `notification.created` event in one
    transaction; the consumer acks only after this returns, i.e. after the commit."""
    described = describe(event)
    async with database.transaction() as session:
        notification = await repository.add_notification(
            session,
            user_id=described.user_id,
            type_=event.type,
            message=described.message,
            event_id=event.id,
        )
        if notification is None:
            logger.info("event %s was already handled; acknowledged again", event.id)
            return
        await repository.add_event(session, notification_created(notification))


async def list_notifications(
    *, session: AsyncSession, user_id: uuid.UUID, params: PageParams
) -> Page[NotificationRead]:
    rows = await repository.list_notifications(session, user_id=user_id, params=params)
    return build_page(
        rows,
        params=params,
        key=lambda n: Cursor(created_at=n.created_at, id=n.id),
        to_item=NotificationRead.model_validate,
    )


async def mark_read(
    *, session: AsyncSession, notification_id: uuid.UUID, user_id: uuid.UUID
) -> Notification:
    notification = await repository.mark_read(
        session, notification_id=notification_id, user_id=user_id
    )
    if notification is None:
        raise NotFoundError("Notification not found.")
    return notification
