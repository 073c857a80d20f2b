"""Tables of the orders database (API schemas live in `schemas.py`).

SQLAlchemy Core tables, not ORM classes: a repository runs one Core statement per change, at
a fraction of the ORM's CPU (docs/benchmarks.md, "What an order costs").
"""

from __future__ import annotations

import enum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    Index,
    String,
    Table,
    UniqueConstraint,
    Uuid,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from meshkit.db import new_metadata
from meshkit.messaging import Outbox

metadata = new_metadata()


class OrderStatus(enum.StrEnum):
    CREATED = "created"
    CANCELLED = "cancelled"


orders = Table(
    "orders",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, nullable=False),
    Column(
        "status",
        Enum(OrderStatus, name="order_status", values_callable=lambda e: [m.value for m in e]),
        nullable=False,
    ),
    # Line items never change once ordered: stored with the order as one JSON document.
    Column("items", JSONB, nullable=False),
    # Up to 100 items x 1000 x 10_000_000 cents = 10^12: beyond a 32-bit integer.
    Column("total_cents", BigInteger, nullable=False),
    Column("idempotency_key", String(255)),
    Column("request_hash", String(64)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The database, not a prior SELECT, decides that a key is used once per user.
    UniqueConstraint("user_id", "idempotency_key", name="uq_orders_user_id_idempotency_key"),
    CheckConstraint("total_cents >= 0", name="total_not_negative"),
    Index("ix_orders_user_id_created_at_id", "user_id", "created_at", "id"),
)

outbox = Outbox(metadata)
