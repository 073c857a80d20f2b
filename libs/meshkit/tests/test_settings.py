from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from meshkit.migrations import migrate_from_environment
from meshkit.settings import ServiceSettings


def test_local_development_accepts_passwordless_database() -> None:
    settings = ServiceSettings(
        service_name="s", environment="local", database_url="postgresql+asyncpg://postgres@db/s"
    )

    assert settings.environment.is_development


@pytest.mark.parametrize(
    "url", ["postgresql+asyncpg://postgres@db/s", "postgresql+asyncpg://app:postgres@db/s"]
)
def test_production_refuses_a_database_url_without_a_real_password(url: str) -> None:
    with pytest.raises(ValidationError, match="refusing to start in production: DATABASE_URL"):
        ServiceSettings(service_name="s", environment="production", database_url=url)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENVIRONMENT", "production")
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://app:s3cret-value@db/s")

    settings = ServiceSettings(service_name="s")

    assert settings.environment == "production"
    assert settings.database_url == "postgresql+asyncpg://app:s3cret-value@db/s"


def test_migration_command_refuses_to_run_without_a_database_url(tmp_path: Path) -> None:
    settings = ServiceSettings(service_name="s", environment="test", database_url=None)

    with pytest.raises(SystemExit, match="DATABASE_URL is not set"):
        migrate_from_environment(settings, tmp_path)
