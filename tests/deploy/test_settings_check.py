"""The settings check the deployment tests rely on refuses what production would refuse."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from meshdev.deployfiles import LocalDefaultError, local_only_settings, settings_from

URL = "postgresql+asyncpg://users:s3cret@users-db-rw:5432/users"
BROKER = "amqp://users:s3cret@rabbitmq:5672/"


def test_settings_that_default_to_this_machine_are_found() -> None:
    assert "DATABASE_URL" in local_only_settings("users_service")


def test_a_setting_left_at_its_local_default_is_refused() -> None:
    with pytest.raises(LocalDefaultError, match="DATABASE_URL"):
        settings_from("users_service", {"JWT_PRIVATE_KEY_FILE": "/keys/k.pem"})


def test_an_unsafe_value_is_refused_as_in_production() -> None:
    env = {
        "DATABASE_URL": URL.replace("s3cret", "postgres"),
        "JWT_PRIVATE_KEY_FILE": "/k.pem",
        "RABBITMQ_URL": BROKER,
    }
    # The model validator's UnsafeSettingsError reaches the caller inside pydantic's error.
    with pytest.raises(ValidationError, match="DATABASE_URL must carry a real password"):
        settings_from("users_service", env)


def test_the_process_environment_is_neither_read_nor_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/x")
    monkeypatch.setenv("ENVIRONMENT", "test")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    settings = settings_from(
        "users_service", {"DATABASE_URL": URL, "JWT_PRIVATE_KEY_FILE": "/k", "RABBITMQ_URL": BROKER}
    )
    assert settings.database_url == URL
    assert settings.environment == "production"
    assert settings.log_level == "INFO"
    assert os.environ["DATABASE_URL"] == "postgresql+asyncpg://postgres@127.0.0.1:5432/x"
    assert os.environ["ENVIRONMENT"] == "test"
