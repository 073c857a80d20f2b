"""Configuration of the notifications service (environment first)."""

from __future__ import annotations

from pydantic import Field

from meshkit.messaging import MessagingSettings


class NotificationsSettings(MessagingSettings):
    service_name: str = "notifications"
    database_url: str | None = "postgresql+asyncpg://postgres@127.0.0.1:5432/notifications"
    jwks_url: str | None = "http://127.0.0.1:8001/api/auth/jwks.json"

    events_queue: str = Field(
        default="notifications", description="The durable quorum queue this service consumes."
    )
    delivery_limit: int = Field(
        default=5, ge=1, le=100, description="Deliveries before a failing message is dead-lettered."
    )
    # Messages are stored in batches of up to half the prefetch window, one statement and one
    # database connection per batch; the other half arrives while a batch is being stored.
    consumer_prefetch: int = Field(
        default=200,
        ge=1,
        le=2000,
        description="Unacked messages per channel; batches are up to half of it.",
    )
    retry_delay_seconds: float = Field(
        default=0.5, ge=0, le=60, description="First pause before a failed message is requeued."
    )
    push_buffer: int = Field(
        default=100, ge=1, le=10_000, description="Notifications buffered per open stream."
    )
    stream_limit_per_user: int = Field(
        default=8,
        ge=0,
        description="Event streams and WebSockets one user may hold open in one process; "
        "0: no cap. The gateway holds the same cap across every replica.",
    )
