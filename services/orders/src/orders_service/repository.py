"""All SQL of the orders service."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from meshkit import messaging
from meshkit.pagination import PageParams, paginate_newest_first
from orders_service.models import Order, OrderStatus, outbox


class IdempotencyKeyTakenError(Exception):
    """Another request inserted an order with the same key first."""


async def lock_idempotency_key(session: AsyncSession, *, user_id: uuid.UUID, key: str) -> bool:
    """Try to take a transaction-scoped lock on (user, key); False while another request holds
    it, i.e. the same key is in flight. Released by commit or rollback."""
    result = await session.execute(
        text("SELECT pg_try_advisory_xact_lock(hashtextextended(:lock_key, 0))"),
        {"lock_key": f"orders:{user_id}:{key}"},
    )
    return bool(result.scalar_one())


async def find_by_idempotency_key(
    session: AsyncSession, *, user_id: uuid.UUID, key: str
) -> Order | None:
    result = await session.execute(
        select(Order).where(Order.user_id == user_id, Order.idempotency_key == key)
    )
    return result.scalar_one_or_none()


async def add_order(
    session: AsyncSession,
    *,
    user_id: uuid.UUID,
    items: list[dict[str, Any]],
    total_cents: int,
    idempotency_key: str | None,
    request_hash: str | None,
) -> Order:
    order = Order(
        user_id=user_id,
        items=items,
        total_cents=total_cents,
        status=OrderStatus.CREATED,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(order)
    try:
        # No savepoint: a duplicate key ends the request (409) and its whole transaction.
        # The INSERT returns the server-side defaults (created_at, updated_at), so no refresh.
        await session.flush()
    except IntegrityError as exc:
        if "uq_orders_user_id_idempotency_key" in str(exc.orig):
            raise IdempotencyKeyTakenError(idempotency_key) from exc
        raise
    return order


async def get_order(
    session: AsyncSession, *, order_id: uuid.UUID, user_id: uuid.UUID
) -> Order | None:
    result = await session.execute(
        select(Order).where(Order.id == order_id, Order.user_id == user_id)
    )
    return result.scalar_one_or_none()


async def list_orders(
    session: AsyncSession, *, user_id: uuid.UUID, params: PageParams
) -> Sequence[Order]:
    statement = paginate_newest_first(
        select(Order).where(Order.user_id == user_id),
        created_at=Order.created_at,
        id_=Order.id,
        params=params,
    )
    orders: Sequence[Order] = (await session.execute(statement)).scalars().all()
    return orders


async def cancel_order(
    session: AsyncSession, *, order_id: uuid.UUID, user_id: uuid.UUID
) -> Order | None:
    """Cancels in one statement, so two concurrent cancels cannot both succeed; None if the
    order is not the user's or is not in the `created` state."""
    result = await session.execute(
        update(Order)
        .where(
            Order.id == order_id,
            Order.user_id == user_id,
            Order.status == OrderStatus.CREATED,
        )
        .values(status=OrderStatus.CANCELLED, updated_at=func.now())
        .returning(Order)
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def add_event(session: AsyncSession, event: messaging.CloudEvent) -> None:
    await messaging.add_event(session, outbox, event)
