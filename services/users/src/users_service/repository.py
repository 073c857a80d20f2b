"""All SQL of the users service."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from meshkit import messaging
from users_service.models import User, outbox


class EmailTakenError(Exception):
    pass


async def add_user(session: AsyncSession, *, email: str, name: str, password_hash: str) -> User:
    user = User(email=email, name=name, password_hash=password_hash)
    try:
        # Inserted in a savepoint: the unique constraint, not a prior SELECT, decides (no race),
        # and a duplicate leaves the surrounding transaction usable.
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as exc:
        if "uq_users_email" in str(exc.orig):
            raise EmailTakenError(email) from exc
        raise
    await session.refresh(user)
    return user


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    return await session.get(User, user_id)


async def find_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email.lower()))
    return result.scalar_one_or_none()


async def add_event(session: AsyncSession, event: messaging.CloudEvent) -> None:
    await messaging.add_event(session, outbox, event)
