"""All SQL of the notifications service: SQLAlchemy Core statements, built once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, Boolean, DateTime, Row, String, Uuid, bindparam, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.db import owners_row
from meshkit.pagination import PageParams, newest_first
from notifications_service.models import notifications

# A whole batch of notifications and their `notification.created` rows in one statement: rows
# as arrays, one notification per event (an event already stored, or twice in the batch, is
# skipped by the unique `event_id`), and an outbox row only for the notifications inserted.
_INSERT_WITH_EVENTS = text(
    """
    WITH stored AS (
        INSERT INTO notifications (id, user_id, type, message, event_id, read, created_at)
        SELECT * FROM unnest(:ids, :user_ids, :types, :messages, :event_ids, :reads, :times)
        ON CONFLICT (event_id) DO NOTHING
        RETURNING id
    )
    INSERT INTO outbox (id, event_type, event, traceparent, tracestate)
    SELECT row.id, row.event_type, CAST(row.event AS JSONB), row.traceparent, row.tracestate
    FROM unnest(
        :outbox_ids, :outbox_event_types, :outbox_events, :outbox_traceparents,
        :outbox_tracestates, :ids
    ) AS row (id, event_type, event, traceparent, tracestate, notification_id)
    JOIN stored ON stored.id = row.notification_id
    """
).bindparams(
    bindparam("ids", type_=ARRAY(Uuid)),
    bindparam("user_ids", type_=ARRAY(Uuid)),
    bindparam("types", type_=ARRAY(String)),
    bindparam("messages", type_=ARRAY(String)),
    bindparam("event_ids", type_=ARRAY(Uuid)),
    bindparam("reads", type_=ARRAY(Boolean)),
    bindparam("times", type_=ARRAY(DateTime(timezone=True))),
    bindparam("outbox_ids", type_=ARRAY(Uuid)),
    bindparam("outbox_event_types", type_=ARRAY(String)),
    bindparam("outbox_events", type_=ARRAY(String)),
    bindparam("outbox_traceparents", type_=ARRAY(String)),
    bindparam("outbox_tracestates", type_=ARRAY(String)),
)

# Which array of the statement holds which value of a row, and of its outbox row.
_ROW_ARRAYS = {
    "ids": "id",
    "user_ids": "user_id",
    "types": "type",
    "messages": "message",
    "event_ids": "event_id",
    "reads": "read",
    "times": "created_at",
}
_EVENT_ARRAYS = {
    "outbox_ids": "outbox_id",
    "outbox_event_types": "outbox_event_type",
    "outbox_events": "outbox_event",
    "outbox_traceparents": "outbox_traceparent",
    "outbox_tracestates": "outbox_tracestate",
}


async def add_notifications(
    connection: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
) -> None:
    """Inserts `rows` (rows of `notifications`) with their outbox rows (`events[i]`: the
    `outbox_values` of `rows[i]`'s event); the rows of events already stored are skipped."""
    parameters = {array: [row[key] for row in rows] for array, key in _ROW_ARRAYS.items()}
    parameters.update({array: [e[key] for e in events] for array, key in _EVENT_ARRAYS.items()})
    await connection.execute(_INSERT_WITH_EVENTS, parameters)


async def list_notifications(
    connection: AsyncConnection, *, user_id: uuid.UUID, params: PageParams
) -> Sequence[Row[Any]]:
    return await newest_first(
        connection, notifications, notifications.c.user_id == user_id, params=params
    )


_MARK_READ = (
    update(notifications)
    .where(owners_row(notifications, "notification_id"))
    .values(read=True)
    .returning(*notifications.c)
)


async def mark_read(
    connection: AsyncConnection, *, notification_id: uuid.UUID, user_id: uuid.UUID
) -> Row[Any] | None:
    result = await connection.execute(
        _MARK_READ, {"notification_id": notification_id, "owner_id": user_id}
    )
    return result.one_or_none()
