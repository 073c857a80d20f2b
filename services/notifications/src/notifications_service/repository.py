"""All SQL of the notifications service: SQLAlchemy Core statements, built once."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ARRAY, Row, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.db import owners_row
from meshkit.messaging import OutboxRow, outbox_arrays
from meshkit.pagination import PageParams, newest_first
from notifications_service.models import notifications, outbox

# A whole batch of notifications and their `notification.created` rows in one statement: each
# column as an array, one notification per event (an event already stored, or twice in the
# batch, is skipped by the unique `event_id`), and an outbox row only for those inserted.
_COLUMNS = notifications.c.keys()
_ROWS = (
    func.unnest(*(bindparam(c.name, type_=ARRAY(c.type)) for c in notifications.c))
    .table_valued(*_COLUMNS)
    .render_derived()
)
_STORED = (
    insert(notifications)
    .from_select(_COLUMNS, select(_ROWS))
    .on_conflict_do_nothing(index_elements=[notifications.c.event_id])
    .returning(notifications.c.id)
    .cte("stored")
)
_INSERT_WITH_EVENTS = outbox.insert_rows(_STORED, key="id")


async def add_notifications(
    connection: AsyncConnection, rows: Sequence[dict[str, Any]], events: Sequence[OutboxRow]
) -> None:
    """Inserts `rows` (rows of `notifications`) with their outbox rows (`events[i]`: the
    event of `rows[i]`); the rows of events already stored are skipped."""
    parameters: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in _COLUMNS}
    parameters.update(outbox_arrays(events))
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
