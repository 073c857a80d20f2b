"""The Docker engine as tests use it: the CLI, the images `make images` built, and a gate that
skips a test when no engine is reachable (and fails it instead when `CI=true`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pytest
from dotenv import dotenv_values

REPOSITORY = Path(__file__).resolve().parents[4]
# Written by `make offline-images`: the names of the images made here from Debian packages.
IMAGES_ENV = REPOSITORY / ".dev" / "images.env"
DEPLOYABLES = ("gateway", "users", "orders", "notifications")
IMAGE_NAMES = (
    "POSTGRES_IMAGE",
    "RABBITMQ_IMAGE",
    "REDIS_IMAGE",
    "MESH_IMAGE_REPO",
    "MESH_IMAGE_TAG",
)


def docker_cli() -> str:
    """Debian's client where it exists (it builds with BuildKit without the buildx plugin);
    `DOCKER` overrides it."""
    configured = os.environ.get("DOCKER")
    if configured:
        return configured
    return (
        "/usr/bin/docker"
        if Path("/usr/bin/docker").exists()
        else shutil.which("docker") or "docker"
    )


def docker(
    *args: str, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [docker_cli(), *args], check=check, capture_output=True, text=True, timeout=timeout
    )


@cache
def engine_problem() -> str | None:
    """Why no Docker engine can be used, or None when one answers."""
    try:
        answer = docker("version", "--format", "{{.Server.Version}}", check=False, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"no docker client ({error})"
    if answer.returncode != 0:
        return f"no Docker engine answers: {answer.stderr.strip() or answer.stdout.strip()}"
    return None


def require_engine() -> None:
    """Skips the calling test with the reason when no engine answers; under `CI=true` a
    missing engine fails the test instead, so CI never passes by skipping the containers."""
    problem = engine_problem()
    if problem is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"container tests need a Docker engine in CI: {problem}")
    pytest.skip(f"container tests skipped: {problem}")


def image_settings() -> dict[str, str]:
    """Image names: the environment first, then `.dev/images.env` (offline images)."""
    settings = {
        name: value for name, value in dotenv_values(IMAGES_ENV).items() if value is not None
    }
    return settings | {name: os.environ[name] for name in IMAGE_NAMES if os.environ.get(name)}


def app_image(deployable: str) -> str:
    """The image `make images` built for a deployable."""
    settings = image_settings()
    repository = settings.get("MESH_IMAGE_REPO", "mesh")
    return f"{repository}/{deployable}:{settings.get('MESH_IMAGE_TAG', 'dev')}"


def infrastructure_image(name: str) -> str:
    """POSTGRES, RABBITMQ or REDIS: the offline image when one was made, else the official."""
    official = {
        "POSTGRES": "postgres:17.5-bookworm",
        "RABBITMQ": "rabbitmq:4.1.1-management",
        "REDIS": "redis:7.4.7",
    }
    return image_settings().get(f"{name}_IMAGE", official[name])


def require_images(images: Sequence[str]) -> None:
    """Fails (never skips) when an image is missing: `make test` builds them before pytest."""
    missing = [
        image for image in images if docker("image", "inspect", image, check=False).returncode
    ]
    assert not missing, f"images not built: {missing} (make images, or make offline-images first)"


def remove_containers(*names: str) -> None:
    if names:
        docker("rm", "--force", "--volumes", *names, check=False)
