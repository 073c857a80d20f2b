"""`make run`'s choice of log lines for its processes: readable in a terminal, JSON otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshdev.mesh import MESH, Wiring
from meshdev.run import children

WIRING = Wiring(
    ports={d.name: d.port for d in MESH},
    databases={d.name: d.database for d in MESH if d.database},
    postgres_url="postgresql+asyncpg://postgres@127.0.0.1:5432",
    rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/",
    jwt_private_key_file=Path("jwt.pem"),
)


@pytest.fixture(autouse=True)
def _no_choice_made(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOG_FORMAT", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


def test_in_a_terminal_every_process_prints_coloured_console_lines() -> None:
    envs = [child.env for child in children(WIRING, terminal=True)]

    assert [env["LOG_FORMAT"] for env in envs] == ["console"] * len(MESH)
    # Their stdout is make run's pipe, not the terminal: they are told to colour.
    assert [env["FORCE_COLOR"] for env in envs] == ["1"] * len(MESH)


def test_without_a_terminal_every_process_prints_json_lines() -> None:
    for child in children(WIRING, terminal=False):
        assert "LOG_FORMAT" not in child.env  # the default: json
        assert "FORCE_COLOR" not in child.env


def test_a_log_format_or_no_color_given_to_make_run_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    assert {c.env["LOG_FORMAT"] for c in children(WIRING, terminal=True)} == {"json"}

    monkeypatch.delenv("LOG_FORMAT")
    monkeypatch.setenv("NO_COLOR", "1")
    for child in children(WIRING, terminal=True):
        assert (child.env["LOG_FORMAT"], child.env["NO_COLOR"]) == ("console", "1")


def test_every_process_runs_the_production_command_as_its_service() -> None:
    for deployable, child in zip(MESH, children(WIRING, terminal=False), strict=True):
        assert child.command[1:] == [
            "--config",
            "python:meshkit.gunicorn_conf",
            f"{deployable.package}.main:create_app()",
        ]
        assert (child.env["OTEL_SERVICE_NAME"], child.env["PORT"]) == (
            deployable.name,
            str(deployable.port),
        )
