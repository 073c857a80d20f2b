"""Configuration of the gateway (environment first)."""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from meshkit.ratelimit import RateLimitStorageSettings

MIB = 1024 * 1024


class GatewaySettings(RateLimitStorageSettings):
    service_name: str = "gateway"

    users_url: str | None = Field(
        default="http://127.0.0.1:8001", description="Users service; empty to not route it."
    )
    orders_url: str | None = Field(
        default="http://127.0.0.1:8002", description="Orders service; empty to not route it."
    )
    notifications_url: str | None = Field(
        default="http://127.0.0.1:8003",
        description="Notifications service; empty to not route it.",
    )

    body_limit_bytes: int = Field(default=MIB, ge=0, description="Largest request body; 413 above.")
    upstream_connect_timeout: float = Field(default=1.0, gt=0)
    upstream_read_timeout: float = Field(
        default=10.0, gt=0, description="Waiting for an upstream answer; 504 past it."
    )
    stream_read_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Idle time allowed inside a started response (event streams send "
        "keep-alives every 15 s); the answer itself must start within UPSTREAM_READ_TIMEOUT.",
    )
    upstream_max_connections: int = Field(
        default=256, ge=1, description="Pool of ordinary requests, per upstream and process."
    )
    request_body_timeout: float = Field(
        default=30.0,
        gt=0,
        description="Seconds a request body may take to arrive, whole; 408 past it.",
    )
    retry_attempts: int = Field(
        default=2, ge=0, le=2, description="Retries of idempotent requests that could not connect."
    )
    breaker_failure_threshold: int = Field(
        default=5, ge=1, description="Consecutive failures that open an upstream's circuit."
    )
    breaker_recovery_seconds: float = Field(
        default=10.0, gt=0, description="How long an open circuit fails fast before a probe."
    )

    rate_limit_enabled: bool = True
    rate_limit: str = Field(
        default="50/second;1000/minute",
        description="`limits` notation, per client (user id, else address); several with `;`.",
    )
    rate_limit_strategy: str = Field(
        default="sliding-window-counter",
        pattern="^(sliding-window-counter|fixed-window|moving-window)$",
    )
    stream_limit_per_user: int = Field(
        default=8,
        ge=0,
        description="Event streams and WebSockets one user may hold open at once, across every "
        "process and replica (leases in the rate-limit storage); 0: no cap.",
    )
    stream_limit_per_process: int = Field(
        default=256,
        ge=1,
        description="Streams one gateway process holds open at once (its stream pool per "
        "upstream is as large); new ones are answered 503 above.",
    )
    stream_lease_seconds: float = Field(
        default=30.0,
        ge=3,
        le=3600,
        description="Life of a stream's lease in the shared storage, renewed every third of it "
        "while the stream is open: how long a dead process's streams still count.",
    )
    websocket_messages_per_second: int = Field(
        default=10,
        ge=1,
        description="Messages a WebSocket client may send per second; the socket is closed "
        "with 1008 above.",
    )
    cors_allow_origins: list[str] = Field(
        default_factory=list,
        description='JSON list, e.g. ["https://app.example.com"]; empty: no CORS.',
    )
    openapi_refresh_seconds: float = Field(default=60.0, gt=0)

    @field_validator("users_url", "orders_url", "notifications_url", mode="before")
    @classmethod
    def _empty_means_not_routed(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip().rstrip("/")
            return value or None
        return value

    @model_validator(mode="before")
    @classmethod
    def _jwks_from_users(cls, data: Any) -> Any:
        # The keys live at the users service unless told otherwise.
        if isinstance(data, dict) and not data.get("jwks_url"):
            users = data.get("users_url", "http://127.0.0.1:8001")
            if isinstance(users, str) and users.strip():
                data["jwks_url"] = f"{users.strip().rstrip('/')}/api/auth/jwks.json"
        return data

    def upstream_urls(self) -> dict[str, str]:
        """The upstreams this gateway routes to, by name."""
        urls = {
            "users": self.users_url,
            "orders": self.orders_url,
            "notifications": self.notifications_url,
        }
        return {name: url for name, url in urls.items() if url}

    def unsafe_settings(self) -> list[str]:
        problems = super().unsafe_settings()
        if "*" in self.cors_allow_origins:
            problems.append("CORS_ALLOW_ORIGINS must name origins, not `*`")
        return problems
