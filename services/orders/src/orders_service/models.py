"""ORM models of the orders database (API schemas live in `schemas.py`)."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    Index,
    String,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meshkit.db import new_metadata
from meshkit.messaging import outbox_table


class Base(DeclarativeBase):
    metadata = new_metadata()


class OrderStatus(enum.StrEnum):
    CREATED = "created"
    CANCELLED = "cancelled"


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        # The database, not a prior SELECT, decides that a key is used once per user.
        UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_id_idempotency_key"),
        CheckConstraint("total_cents >= 0", name="total_not_negative"),
        Index("ix_orders_user_id_created_at_id", "user_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    status: Mapped[OrderStatus] = mapped_column(
        Enum(OrderStatus, name="order_status", values_callable=lambda e: [m.value for m in e]),
        default=OrderStatus.CREATED,
    )
    # Line items never change once ordered: stored with the order as one JSON document.
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)
    # Up to 100 items x 1000 x 10_000_000 cents = 10^12: beyond a 32-bit integer.
    total_cents: Mapped[int] = mapped_column(BigInteger)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


outbox = outbox_table(Base.metadata)
