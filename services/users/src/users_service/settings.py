"""Configuration of the users service (environment first)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from meshkit.messaging import MessagingSettings
from meshkit.ratelimit import RateLimitStorageSettings


class UsersSettings(MessagingSettings, RateLimitStorageSettings):
    service_name: str = "users"
    database_url: str | None = "postgresql+asyncpg://postgres@127.0.0.1:5432/users"

    jwt_private_key_file: Path | None = Field(
        default=None,
        description="PEM file of the Ed25519 signing key. Required outside local development.",
    )
    jwt_retired_public_key_files: list[Path] = Field(
        default_factory=list,
        description="PEM public keys still published in the JWKS while their tokens expire.",
    )
    access_token_ttl_seconds: int = Field(default=900, ge=60, le=86_400)

    login_failure_limit: str = Field(
        default="10/minute", description="Failed logins allowed per email and per client address."
    )

    def unsafe_settings(self) -> list[str]:
        problems = super().unsafe_settings()
        if self.jwt_private_key_file is None:
            problems.append("JWT_PRIVATE_KEY_FILE must point at the signing key")
        return problems
