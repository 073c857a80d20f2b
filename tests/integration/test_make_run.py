"""`make run`'s preflight: a missing PostgreSQL or RabbitMQ is one clear line, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from meshdev.processes import free_port


@pytest.mark.parametrize(
    ("variable", "url", "name"),
    [
        ("POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:{port}", "PostgreSQL"),
        ("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:{port}/", "RabbitMQ"),
    ],
)
def test_unreachable_dependency_is_reported_in_one_line(variable: str, url: str, name: str) -> None:
    closed = url.format(port=free_port())

    result = subprocess.run(
        [sys.executable, "-m", "meshdev.run"],
        env={**os.environ, variable: closed},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{name} is not reachable at {closed}" in lines[0]
    assert "Traceback" not in result.stderr
