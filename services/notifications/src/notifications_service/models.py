"""Tables of the notifications database (API schemas live in `schemas.py`).

SQLAlchemy Core tables, not ORM classes: a batch of events is stored with one Core statement
(docs/benchmarks.md, "What an order costs").
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, DateTime, Index, String, Table, Uuid, func

from meshkit.db import new_metadata
from meshkit.messaging import Outbox

metadata = new_metadata()

notifications = Table(
    "notifications",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("user_id", Uuid, nullable=False),
    Column("type", String(100), nullable=False),
    Column("message", String(500), nullable=False),
    # One notification per event, however often the event is delivered.
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("read", Boolean, nullable=False, server_default="false"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_notifications_user_id_created_at_id", "user_id", "created_at", "id"),
)

outbox = Outbox(metadata)
