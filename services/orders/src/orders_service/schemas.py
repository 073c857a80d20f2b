"""Request and response bodies of the orders API."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from meshkit.fields import StorableStr
from orders_service.models import OrderStatus


class OrderItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sku: StorableStr = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=1000)
    unit_price_cents: int = Field(ge=0, le=10_000_000)


class OrderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[OrderItem] = Field(min_length=1, max_length=100)


class OrderRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    status: OrderStatus
    items: list[OrderItem]
    total_cents: int = Field(description="Sum of quantity times unit price, in cents.")
    created_at: datetime
    updated_at: datetime
