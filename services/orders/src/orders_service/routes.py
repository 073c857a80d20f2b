"""HTTP routes of the orders service: validation and status codes only; rules live in `service`."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Header, status

from meshkit.app import app_state
from meshkit.auth import CurrentPrincipal
from meshkit.pagination import Page, PageParamsDep
from meshkit.unit_of_work import UnitOfWorkDep
from orders_service import service
from orders_service.schemas import OrderCreate, OrderRead
from orders_service.users import UsersClient

UsersDep = Annotated[UsersClient, app_state("users")]

orders = APIRouter(prefix="/api/orders", tags=["orders"])


@orders.post("", status_code=status.HTTP_201_CREATED, response_model=OrderRead)
async def place_order(
    data: OrderCreate,
    principal: CurrentPrincipal,
    work: UnitOfWorkDep,
    users: UsersDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            description="Retrying with the same key and body returns the same order; "
            "a different body is 422, a retry while the first is in flight is 409.",
        ),
    ] = None,
) -> Any:
    """Place an order. Publishes `order.created`."""
    return await service.place_order(
        work=work,
        users=users,
        user_id=principal.user_id,
        data=data,
        idempotency_key=idempotency_key,
    )


@orders.get("", response_model=Page[OrderRead])
async def list_orders(
    principal: CurrentPrincipal, work: UnitOfWorkDep, params: PageParamsDep
) -> Page[OrderRead]:
    """The caller's orders, newest first."""
    return await service.list_orders(work=work, user_id=principal.user_id, params=params)


@orders.get("/{order_id}", response_model=OrderRead)
async def get_order(order_id: uuid.UUID, principal: CurrentPrincipal, work: UnitOfWorkDep) -> Any:
    """One of the caller's orders; anyone else's is 404."""
    return await service.get_order(work=work, order_id=order_id, user_id=principal.user_id)


@orders.post("/{order_id}/cancel", response_model=OrderRead)
async def cancel_order(
    order_id: uuid.UUID, principal: CurrentPrincipal, work: UnitOfWorkDep
) -> Any:
    """Cancel an order; an already cancelled order is 409. Publishes `order.cancelled`."""
    return await service.cancel_order(work=work, order_id=order_id, user_id=principal.user_id)


routers = (orders,)
