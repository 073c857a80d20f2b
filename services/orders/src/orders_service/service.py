"""Business rules of the orders service: placing (idempotently), reading and cancelling orders.

Each rule opens the block of work it needs (`UnitOfWork`), which commits before the route
answers: placing an order is one statement (the order and its event row), an idempotent retry
and a cancel are transactions.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.pagination import Page, PageParams, build_page
from meshkit.problems import ConflictError, NotFoundError, UnprocessableError
from meshkit.unit_of_work import UnitOfWork
from orders_service import repository
from orders_service.events import ORDER_CANCELLED, ORDER_CREATED, order_event
from orders_service.models import OrderStatus
from orders_service.schemas import OrderCreate, OrderRead
from orders_service.users import UsersClient

IN_FLIGHT = "A request with this Idempotency-Key is still being processed; retry later."


def request_fingerprint(data: OrderCreate) -> str:
    """What "the same body" means for an idempotent retry: the validated order, not its bytes."""
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


async def place_order(
    *,
    work: UnitOfWork,
    users: UsersClient,
    user_id: uuid.UUID,
    data: OrderCreate,
    idempotency_key: str | None,
) -> OrderRead:
    """Stores the order and its `order.created` event together.

    The user check comes first, before any database work, so no connection is held while
    waiting for the users service; if it is unreachable, nothing is stored or published.
    """
    await users.ensure_exists(user_id)
    now = datetime.now(UTC)
    order = OrderRead(
        id=uuid.uuid4(),
        user_id=user_id,
        status=OrderStatus.CREATED,
        items=data.items,
        total_cents=sum(i.quantity * i.unit_price_cents for i in data.items),
        created_at=now,
        updated_at=now,
    )
    fingerprint = request_fingerprint(data) if idempotency_key is not None else None
    row = {**order.model_dump(), "idempotency_key": idempotency_key, "request_hash": fingerprint}
    # Without a key the order is one statement; with one, the key is locked and looked up in
    # the transaction that stores the order.
    async with work.connect() if idempotency_key is None else work.transaction() as connection:
        if idempotency_key is not None:
            existing = await _claim_key(connection, user_id, idempotency_key)
            if existing is not None:
                return _replay(existing, fingerprint)
        try:
            await repository.add_order(
                connection, row, work.publish(order_event(ORDER_CREATED, order))
            )
        except repository.IdempotencyKeyTakenError as exc:
            # Only reachable if the advisory lock was bypassed; the constraint still holds.
            raise ConflictError(IN_FLIGHT) from exc
    return order


async def _claim_key(connection: AsyncConnection, user_id: uuid.UUID, key: str) -> Row[Any] | None:
    """The order an earlier request stored under `key`, if any; ConflictError while another
    request with the same key is in flight."""
    if not await repository.lock_idempotency_key(connection, user_id=user_id, key=key):
        raise ConflictError(IN_FLIGHT)
    return await repository.find_by_idempotency_key(connection, user_id=user_id, key=key)


def _replay(existing: Row[Any], fingerprint: str | None) -> OrderRead:
    if existing.request_hash != fingerprint:
        raise UnprocessableError(
            "This Idempotency-Key was already used with a different request body.",
            loc=("header", "idempotency-key"),
            error_type="idempotency_key_reused",
        )
    return OrderRead.model_validate(existing)


async def get_order(*, work: UnitOfWork, order_id: uuid.UUID, user_id: uuid.UUID) -> OrderRead:
    async with work.connect() as connection:
        return await _visible_order(connection, order_id=order_id, user_id=user_id)


async def _visible_order(
    connection: AsyncConnection, *, order_id: uuid.UUID, user_id: uuid.UUID
) -> OrderRead:
    row = await repository.get_order(connection, order_id=order_id, user_id=user_id)
    if row is None:
        raise NotFoundError("Order not found.")
    return OrderRead.model_validate(row)


async def list_orders(
    *, work: UnitOfWork, user_id: uuid.UUID, params: PageParams
) -> Page[OrderRead]:
    async with work.connect() as connection:
        rows = await repository.list_orders(connection, user_id=user_id, params=params)
    return build_page(rows, params=params, to_item=OrderRead.model_validate)


async def cancel_order(*, work: UnitOfWork, order_id: uuid.UUID, user_id: uuid.UUID) -> OrderRead:
    """Cancels with its `order.cancelled` event in one transaction."""
    async with work.transaction() as connection:
        row = await repository.cancel_order(connection, order_id=order_id, user_id=user_id)
        if row is None:
            # Tell "not yours / not there" (404) apart from "already cancelled" (409).
            await _visible_order(connection, order_id=order_id, user_id=user_id)
            raise ConflictError("The order is already cancelled.")
        order = OrderRead.model_validate(row)
        await repository.add_event(connection, work.publish(order_event(ORDER_CANCELLED, order)))
    return order
