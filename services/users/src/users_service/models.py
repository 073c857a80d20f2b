"""Tables of the users database (API schemas live in `schemas.py`).

SQLAlchemy Core tables, not ORM classes: a repository runs one Core statement per change, at
a fraction of the ORM's CPU (docs/benchmarks.md, "What an order costs").
"""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, DateTime, String, Table, Uuid, func

from meshkit.db import new_metadata
from meshkit.messaging import Outbox

metadata = new_metadata()

users = Table(
    "users",
    metadata,
    Column("id", Uuid, primary_key=True),
    Column("email", String(320), nullable=False, unique=True),
    Column("name", String(100), nullable=False),
    Column("password_hash", String(255), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # Emails are stored lower-cased, so the unique constraint is case-insensitive.
    CheckConstraint("email = lower(email)", name="email_lowercase"),
)

outbox = Outbox(metadata)
