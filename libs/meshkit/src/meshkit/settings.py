"""Settings every deployable shares; each service subclasses `ServiceSettings`.

Environment first: every field is read from an environment variable of the same name (upper case).
Standard OpenTelemetry variables (`OTEL_*`) are read by the SDK itself and are not duplicated here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    LOCAL = "local"
    TEST = "test"
    STAGING = "staging"
    PRODUCTION = "production"

    @property
    def is_development(self) -> bool:
        """Local runs and tests may use generated keys and permissive defaults; nothing else may."""
        return self in (Environment.LOCAL, Environment.TEST)


class UnsafeSettingsError(ValueError):
    """A setting that is only acceptable for local development was used elsewhere."""


class ServiceSettings(BaseSettings):
    """What every process of the mesh needs to know about itself and its neighbours."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", frozen=True)

    service_name: str = Field(description="Logical name; also the default OTel service.name.")
    service_version: str = "0.1.0"
    environment: Environment = Environment.LOCAL
    log_level: str = "INFO"
    log_format: Literal["json", "console"] = Field(
        default="json", description="json lines (machines), or one readable line per record."
    )

    database_url: str | None = Field(
        default=None,
        description="postgresql+asyncpg://user:password@host:port/database",
    )
    database_pool_size: int = Field(default=10, ge=1, le=200)
    database_max_overflow: int = Field(default=10, ge=0, le=200)
    database_pool_pre_ping: bool = Field(
        default=False,
        description="Test every pooled connection before use (three round trips per checkout).",
    )

    jwks_url: str | None = Field(
        default=None, description="Where the users service publishes its public keys."
    )
    jwt_issuer: str = "mesh-users"
    jwt_audience: str = "mesh"

    @model_validator(mode="after")
    def _refuse_unsafe_values_outside_development(self) -> Self:
        if self.environment.is_development:
            return self
        problems = self.unsafe_settings()
        if problems:
            raise UnsafeSettingsError(
                f"refusing to start in {self.environment.value}: " + "; ".join(problems)
            )
        return self

    def unsafe_settings(self) -> list[str]:
        """Names what would be unsafe outside local development; subclasses extend the list."""
        problems: list[str] = []
        if self.database_url is not None:
            from sqlalchemy.engine import make_url

            if make_url(self.database_url).password in (None, "", "postgres"):
                problems.append("DATABASE_URL must carry a real password")
        return problems
