"""Business rules of the users service: registration, login, lookups."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from meshkit.problems import ConflictError, NotFoundError, UnauthorizedError
from meshkit.unit_of_work import UnitOfWork
from users_service import repository
from users_service.events import user_registered
from users_service.login_limits import LoginLimiter
from users_service.schemas import UserCreate, UserRead
from users_service.security import IssuedToken, TokenIssuer, hash_password, verify_password


async def register(*, work: UnitOfWork, data: UserCreate) -> UserRead:
    """Stores the user with its `user.registered` event: both, or neither."""
    password_hash = await hash_password(data.password)
    user = UserRead(id=uuid.uuid4(), email=data.email, name=data.name, created_at=datetime.now(UTC))
    try:
        async with work.connect() as connection:
            await repository.add_user(
                connection,
                {**user.model_dump(), "password_hash": password_hash},
                work.publish(user_registered(user)),
            )
    except repository.EmailTakenError as exc:
        raise ConflictError("A user with this email already exists.") from exc
    return user


async def login(
    *,
    work: UnitOfWork,
    limiter: LoginLimiter,
    issuer: TokenIssuer,
    email: str,
    password: str,
    client: str | None,
) -> IssuedToken:
    await limiter.ensure_allowed(email=email, client=client)
    async with work.connect() as connection:
        user = await repository.find_by_email(connection, email)
    # Same answer, and the same argon2 cost, whether the email exists or not.
    if not await verify_password(password, user.password_hash if user else None) or user is None:
        await limiter.record_failure(email=email, client=client)
        raise UnauthorizedError("Incorrect email or password.")
    return issuer.issue(user.id)


async def get_visible_user(
    *, work: UnitOfWork, user_id: uuid.UUID, caller_id: uuid.UUID
) -> UserRead:
    """Users see only themselves; anyone else's id is answered as if it did not exist."""
    if user_id != caller_id:
        raise NotFoundError("User not found.")
    return await get_user(work=work, user_id=user_id)


async def get_user(*, work: UnitOfWork, user_id: uuid.UUID) -> UserRead:
    async with work.connect() as connection:
        user = await repository.get_user(connection, user_id)
    if user is None:
        raise NotFoundError("User not found.")
    return UserRead.model_validate(user)


async def ensure_exists(*, work: UnitOfWork, user_id: uuid.UUID) -> None:
    async with work.connect() as connection:
        if not await repository.user_exists(connection, user_id):
            raise NotFoundError("User not found.")
