"""The events the users service publishes (routing key = type)."""

from __future__ import annotations

from meshkit.messaging import CloudEvent
from users_service.models import User
from users_service.schemas import UserRead

SOURCE = "users"
USER_REGISTERED = "user.registered"


def user_registered(user: User) -> CloudEvent:
    """`data` is the user as the API shows it (never the password hash)."""
    return CloudEvent(
        source=SOURCE,
        type=USER_REGISTERED,
        subject=str(user.id),
        data=UserRead.model_validate(user).model_dump(mode="json"),
    )
