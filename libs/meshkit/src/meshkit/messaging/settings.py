"""Settings of a service that publishes or consumes events."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field

from meshkit.messaging.relay import RelaySettings
from meshkit.settings import ServiceSettings

# The relay's own defaults, stated once (in RelaySettings) for both.
_RELAY_DEFAULTS = RelaySettings()


class MessagingSettings(ServiceSettings):
    rabbitmq_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        description="amqp://user:password@host:port/vhost",
    )
    outbox_batch_size: int = Field(
        default=_RELAY_DEFAULTS.batch_size,
        ge=1,
        le=5000,
        description="Rows one relay claims and publishes at once.",
    )
    outbox_poll_interval_seconds: float = Field(
        default=_RELAY_DEFAULTS.poll_interval,
        gt=0,
        le=60,
        description="How often a relay looks for rows no wake-up told it of (written by another "
        "program or process, postponed, or left by a relay that died).",
    )

    def relay_settings(self) -> RelaySettings:
        return RelaySettings(
            batch_size=self.outbox_batch_size, poll_interval=self.outbox_poll_interval_seconds
        )

    def unsafe_settings(self) -> list[str]:
        problems = super().unsafe_settings()
        if urlsplit(self.rabbitmq_url).password in (None, "", "guest"):
            problems.append("RABBITMQ_URL must carry a real password")
        return problems
