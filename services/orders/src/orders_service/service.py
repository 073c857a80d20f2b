"""Business rules of the orders service: placing (idempotently), reading and cancelling orders."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from meshkit.pagination import Cursor, Page, PageParams, build_page
from meshkit.problems import ConflictError, NotFoundError, UnprocessableError
from orders_service import repository
from orders_service.events import ORDER_CANCELLED, ORDER_CREATED, order_event
from orders_service.models import Order
from orders_service.schemas import OrderCreate, OrderRead
from orders_service.users import UsersClient

IN_FLIGHT = "A request with this Idempotency-Key is still being processed; retry later."


def request_fingerprint(data: OrderCreate) -> str:
    """What "the same body" means for an idempotent retry: the validated order, not its bytes."""
    return hashlib.sha256(data.model_dump_json().encode()).hexdigest()


async def place_order(
    *,
    session: AsyncSession,
    users: UsersClient,
    user_id: uuid.UUID,
    data: OrderCreate,
    idempotency_key: str | None,
) -> Order:
    """Stores the order and its `order.created` event in one transaction.

    The user check comes first, before any database work, so no connection is held while
    waiting for the users service; if it is unreachable, nothing is stored or published.
    """
    await users.ensure_exists(user_id)
    fingerprint = request_fingerprint(data) if idempotency_key is not None else None
    if idempotency_key is not None:
        if not await repository.lock_idempotency_key(session, user_id=user_id, key=idempotency_key):
            raise ConflictError(IN_FLIGHT)
        existing = await repository.find_by_idempotency_key(
            session, user_id=user_id, key=idempotency_key
        )
        if existing is not None:
            return _replay(existing, fingerprint)
    items = [item.model_dump() for item in data.items]
    try:
        order = await repository.add_order(
            session,
            user_id=user_id,
            items=items,
            total_cents=sum(i.quantity * i.unit_price_cents for i in data.items),
            idempotency_key=idempotency_key,
            request_hash=fingerprint,
        )
    except repository.IdempotencyKeyTakenError as exc:
        # Only reachable if the advisory lock was bypassed; the constraint still holds.
        raise ConflictError(IN_FLIGHT) from exc
    await repository.add_event(session, order_event(ORDER_CREATED, order))
    return order


def _replay(existing: Order, fingerprint: str | None) -> Order:
    if existing.request_hash != fingerprint:
        raise UnprocessableError(
            "This Idempotency-Key was already used with a different request body.",
            loc=("header", "idempotency-key"),
            error_type="idempotency_key_reused",
        )
    return existing


async def get_order(*, session: AsyncSession, order_id: uuid.UUID, user_id: uuid.UUID) -> Order:
    order = await repository.get_order(session, order_id=order_id, user_id=user_id)
    if order is None:
        raise NotFoundError("Order not found.")
    return order


async def list_orders(
    *, session: AsyncSession, user_id: uuid.UUID, params: PageParams
) -> Page[OrderRead]:
    rows = await repository.list_orders(session, user_id=user_id, params=params)
    return build_page(
        rows,
        params=params,
        key=lambda o: Cursor(created_at=o.created_at, id=o.id),
        to_item=OrderRead.model_validate,
    )


async def cancel_order(*, session: AsyncSession, order_id: uuid.UUID, user_id: uuid.UUID) -> Order:
    order = await repository.cancel_order(session, order_id=order_id, user_id=user_id)
    if order is None:
        # Tell "not yours / not there" (404) apart from "already cancelled" (409).
        await get_order(session=session, order_id=order_id, user_id=user_id)
        raise ConflictError("The order is already cancelled.")
    await repository.add_event(session, order_event(ORDER_CANCELLED, order))
    return order
