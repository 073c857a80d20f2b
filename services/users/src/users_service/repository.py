"""All SQL of the users service: SQLAlchemy Core statements, built once, values as parameters."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Row, Select, bindparam, exists, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from meshkit.messaging import OutboxRow
from users_service.models import outbox, users


class EmailTakenError(Exception):
    pass


# The user and its `user.registered` row in one statement: atomic without a transaction, and
# the unique constraint, not a prior SELECT, decides that an email is taken (no race).
_INSERT_USER_WITH_EVENT = outbox.with_row(insert(users))


async def add_user(connection: AsyncConnection, user: dict[str, Any], event: OutboxRow) -> None:
    try:
        await connection.execute(_INSERT_USER_WITH_EVENT, {**user, **event})
    except IntegrityError as exc:
        if "uq_users_email" in str(exc.orig):
            raise EmailTakenError(user["email"]) from exc
        raise


# Never the password hash, except where a login needs it.
_VISIBLE = (users.c.id, users.c.email, users.c.name, users.c.created_at)
_BY_ID: Select[Any] = select(*_VISIBLE).where(users.c.id == bindparam("user_id"))
_EXISTS = select(exists().where(users.c.id == bindparam("user_id")))
_BY_EMAIL: Select[Any] = select(*_VISIBLE, users.c.password_hash).where(
    users.c.email == bindparam("email")
)


async def get_user(connection: AsyncConnection, user_id: uuid.UUID) -> Row[Any] | None:
    user: Row[Any] | None = (await connection.execute(_BY_ID, {"user_id": user_id})).one_or_none()
    return user


async def user_exists(connection: AsyncConnection, user_id: uuid.UUID) -> bool:
    return bool((await connection.execute(_EXISTS, {"user_id": user_id})).scalar_one())


async def find_by_email(connection: AsyncConnection, email: str) -> Row[Any] | None:
    result = await connection.execute(_BY_EMAIL, {"email": email.lower()})
    user: Row[Any] | None = result.one_or_none()
    return user
