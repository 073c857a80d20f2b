"""The events the users service publishes (routing key = type)."""

from __future__ import annotations

from meshkit.messaging import CloudEvent
from users_service.schemas import UserRead

SOURCE = "users"
USER_REGISTERED = "user.registered"


def user_registered(user: UserRead) -> CloudEvent:
    """`data` is the user as the API shows it (never the password hash)."""
    return CloudEvent(
        source=SOURCE,
        type=USER_REGISTERED,
        subject=str(user.id),
        data=user.model_dump(mode="json"),
    )
