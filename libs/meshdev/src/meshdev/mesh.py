"""The mesh's deployables and how they are wired together, in one place.

`make run` and the integration tests both start the mesh from this table, with the same
production command, so what is tested is what runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Deployable:
    name: str  # process name and OpenTelemetry service.name
    package: str  # import name; served as `<package>.main:create_app()`
    port: int  # local default port (../shared/CONTRACT.md)
    database: str | None = None  # default database name; migrated by `<package>.migrate`
    # Deployables this one's /readyz asks: it cannot be ready before they are.
    ready_after: tuple[str, ...] = ()


MESH: tuple[Deployable, ...] = (
    Deployable("users", "users_service", 8001, database="users"),
    # Outbox relays and event consumers run inside these processes (docs/events.md).
    Deployable("orders", "orders_service", 8002, database="orders"),
    Deployable("notifications", "notifications_service", 8003, database="notifications"),
    Deployable("gateway", "mesh_gateway", 8000, ready_after=("users", "orders", "notifications")),
)


@dataclass(frozen=True, slots=True)
class Wiring:
    """Where everything is, for one run of the mesh (local defaults or a test's throw-aways)."""

    ports: Mapping[str, int]
    databases: Mapping[str, str]  # deployable name -> database name
    postgres_url: str  # postgresql+asyncpg://user@host:port (no database)
    rabbitmq_url: str
    jwt_private_key_file: Path
    environment: str = "local"

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def env_for(self, deployable: Deployable) -> dict[str, str]:
        env = {
            "ENVIRONMENT": self.environment,
            "OTEL_SERVICE_NAME": deployable.name,
            "HOST": "127.0.0.1",
            "PORT": str(self.ports[deployable.name]),
            "JWKS_URL": f"{self.url('users')}/api/auth/jwks.json",
            "RABBITMQ_URL": self.rabbitmq_url,
            "USERS_URL": self.url("users"),
        }
        if deployable.database is not None:
            env["DATABASE_URL"] = f"{self.postgres_url}/{self.databases[deployable.name]}"
        if deployable.name == "gateway":
            # Upstreams not in this mesh are not routed (an empty URL switches one off).
            for upstream in ("orders", "notifications"):
                env[f"{upstream.upper()}_URL"] = (
                    self.url(upstream) if upstream in self.ports else ""
                )
        if deployable.name == "users":
            env["JWT_PRIVATE_KEY_FILE"] = str(self.jwt_private_key_file)
            env.pop("JWKS_URL")  # it verifies with its own keys
        return env
