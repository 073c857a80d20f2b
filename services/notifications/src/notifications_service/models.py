"""ORM models of the notifications database (API schemas live in `schemas.py`)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, String, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from meshkit.db import new_metadata
from meshkit.messaging import outbox_table


class Base(DeclarativeBase):
    metadata = new_metadata()


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_user_id_created_at_id", "user_id", "created_at", "id"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID]
    type: Mapped[str] = mapped_column(String(100))
    message: Mapped[str] = mapped_column(String(500))
    # One notification per event, however often the event is delivered.
    event_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    read: Mapped[bool] = mapped_column(default=False, server_default="false")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


outbox = outbox_table(Base.metadata)
