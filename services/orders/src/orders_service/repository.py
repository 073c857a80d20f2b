"""All SQL of the orders service: SQLAlchemy Core statements, built once, values as parameters."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.db import owners_row
from meshkit.messaging import OutboxRow
from meshkit.pagination import PageParams, newest_first
from orders_service.models import OrderStatus, orders, outbox


class IdempotencyKeyTakenError(Exception):
    """Another request inserted an order with the same key first."""


_LOCK_KEY = text("SELECT pg_try_advisory_xact_lock(hashtextextended(:lock_key, 0))")


async def lock_idempotency_key(
    connection: AsyncConnection, *, user_id: uuid.UUID, key: str
) -> bool:
    """Try to take a transaction-scoped lock on (user, key); False while another request holds
    it, i.e. the same key is in flight. Released by commit or rollback."""
    result = await connection.execute(_LOCK_KEY, {"lock_key": f"orders:{user_id}:{key}"})
    return bool(result.scalar_one())


_BY_KEY = select(orders).where(
    orders.c.user_id == bindparam("user_id"),
    orders.c.idempotency_key == bindparam("key"),
)


async def find_by_idempotency_key(
    connection: AsyncConnection, *, user_id: uuid.UUID, key: str
) -> Row[Any] | None:
    result = await connection.execute(_BY_KEY, {"user_id": user_id, "key": key})
    return result.one_or_none()


# The order and its event row in one statement: atomic without BEGIN and COMMIT.
_INSERT_ORDER_WITH_EVENT = outbox.with_row(insert(orders))


async def add_order(connection: AsyncConnection, order: dict[str, Any], event: OutboxRow) -> None:
    """Stores `order` (a row of `orders`) with its event."""
    try:
        await connection.execute(_INSERT_ORDER_WITH_EVENT, {**order, **event})
    except IntegrityError as exc:
        if "uq_orders_user_id_idempotency_key" in str(exc.orig):
            raise IdempotencyKeyTakenError(order["idempotency_key"]) from exc
        raise


_BY_ID = select(orders).where(
    orders.c.id == bindparam("order_id"), orders.c.user_id == bindparam("user_id")
)


async def get_order(
    connection: AsyncConnection, *, order_id: uuid.UUID, user_id: uuid.UUID
) -> Row[Any] | None:
    result = await connection.execute(_BY_ID, {"order_id": order_id, "user_id": user_id})
    return result.one_or_none()


async def list_orders(
    connection: AsyncConnection, *, user_id: uuid.UUID, params: PageParams
) -> Sequence[Row[Any]]:
    return await newest_first(connection, orders, orders.c.user_id == user_id, params=params)


# One statement, so two concurrent cancels cannot both succeed.
_CANCEL = (
    update(orders)
    .where(owners_row(orders, "order_id"), orders.c.status == OrderStatus.CREATED)
    .values(status=OrderStatus.CANCELLED, updated_at=func.now())
    .returning(*orders.c)
)


async def cancel_order(
    connection: AsyncConnection, *, order_id: uuid.UUID, user_id: uuid.UUID
) -> Row[Any] | None:
    """The cancelled order; None if it is not the user's or is not in the `created` state."""
    result = await connection.execute(_CANCEL, {"order_id": order_id, "owner_id": user_id})
    return result.one_or_none()


async def add_event(connection: AsyncConnection, event: OutboxRow) -> None:
    await connection.execute(outbox.insert, event)
