"""Configuration of the orders service (environment first)."""

from __future__ import annotations

from pydantic import Field

from meshkit.messaging import MessagingSettings


class OrdersSettings(MessagingSettings):
    service_name: str = "orders"
    database_url: str | None = "postgresql+asyncpg://postgres@127.0.0.1:5432/orders"
    jwks_url: str | None = "http://127.0.0.1:8001/api/auth/jwks.json"

    users_url: str = Field(
        default="http://127.0.0.1:8001", description="Base URL of the users service."
    )
    users_connect_timeout_seconds: float = Field(default=0.5, gt=0, le=10)
    users_read_timeout_seconds: float = Field(
        default=2.0, gt=0, le=30, description="Keep below the gateway's upstream timeout."
    )
