"""Business rules of the users service: registration, login, lookups."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from meshkit.problems import ConflictError, NotFoundError, UnauthorizedError
from users_service import repository
from users_service.events import user_registered
from users_service.login_limits import LoginLimiter
from users_service.models import User
from users_service.schemas import UserCreate
from users_service.security import IssuedToken, TokenIssuer, hash_password, verify_password


async def register(*, session: AsyncSession, data: UserCreate) -> User:
    password_hash = await hash_password(data.password)
    try:
        user = await repository.add_user(
            session, email=data.email, name=data.name, password_hash=password_hash
        )
    except repository.EmailTakenError as exc:
        raise ConflictError("A user with this email already exists.") from exc
    # In the same transaction as the user: both are stored, or neither.
    await repository.add_event(session, user_registered(user))
    return user


async def login(
    *,
    session: AsyncSession,
    limiter: LoginLimiter,
    issuer: TokenIssuer,
    email: str,
    password: str,
    client: str | None,
) -> IssuedToken:
    await limiter.ensure_allowed(email=email, client=client)
    user = await repository.find_by_email(session, email)
    # Same answer, and the same argon2 cost, whether the email exists or not.
    if not await verify_password(password, user.password_hash if user else None) or user is None:
        await limiter.record_failure(email=email, client=client)
        raise UnauthorizedError("Incorrect email or password.")
    return issuer.issue(user.id)


async def get_visible_user(
    *, session: AsyncSession, user_id: uuid.UUID, caller_id: uuid.UUID
) -> User:
    """Users see only themselves; anyone else's id is answered as if it did not exist."""
    user = await repository.get_user(session, user_id) if user_id == caller_id else None
    if user is None:
        raise NotFoundError("User not found.")
    return user


async def get_user(*, session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await repository.get_user(session, user_id)
    if user is None:
        raise NotFoundError("User not found.")
    return user
