"""The mesh in containers for a test: `compose.yaml` as `make up` runs it (without the
observability layer), under a compose project of the test's own, on a network of its own, with
the gateway published on a free port of 127.0.0.1 and nothing else published.

The images are the ones `make images` built; PostgreSQL, RabbitMQ and Redis are the official
images or the stand-ins of `make offline-images` (`meshdev.docker.image_settings`).
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from meshdev.docker import (
    DEPLOYABLES,
    REPOSITORY,
    app_image,
    docker,
    docker_cli,
    image_settings,
    infrastructure_image,
    require_images,
)
from meshdev.stack import write_signing_key

# The test's own settings on top of compose.yaml (see the file for why each is there).
TEST_OVERRIDE = REPOSITORY / "tests" / "containers" / "compose.test.yaml"
START_TIMEOUT = 300.0


def compose_cli() -> list[str]:
    """`DOCKER_COMPOSE`, else the engine's compose plugin, else the pinned one of `.tools/`
    (the Makefile makes the same choice)."""
    configured = os.environ.get("DOCKER_COMPOSE")
    if configured:
        return shlex.split(configured)
    docker_on_path = shutil.which("docker")
    if (
        docker_on_path
        and subprocess.run(
            [docker_on_path, "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    ):
        return [docker_on_path, "compose"]
    pinned = REPOSITORY / ".tools" / "venv" / "bin" / "docker-compose"
    assert pinned.exists(), "no compose: run `make tools` (or install your engine's compose plugin)"
    return [str(pinned)]


@dataclass
class ContainerMesh:
    """A running compose project; what a mesh test needs of it (`meshdev.stack.MeshTarget`)."""

    project: str
    env: dict[str, str]
    jwt_private_key_file: Path
    gateway_url: str = ""
    names: Sequence[str] = DEPLOYABLES

    def url(self, name: str) -> str:
        assert name == "gateway", f"only the gateway is published, not {name}"
        return self.gateway_url

    def public_url(self, name: str) -> str:
        return self.gateway_url

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def logs(self, name: str) -> str:
        answer = docker("logs", self.container(name), check=False)
        return answer.stdout + answer.stderr

    def compose(
        self, *args: str, check: bool = True, timeout: float = START_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        files = ["-f", str(REPOSITORY / "compose.yaml"), "-f", str(TEST_OVERRIDE)]
        command = [*compose_cli(), "--project-name", self.project, *files, *args]
        answer = subprocess.run(
            command,
            cwd=REPOSITORY,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and answer.returncode != 0:
            output = f"{answer.stdout}\n{answer.stderr}"
            raise AssertionError(f"{shlex.join(args)} failed ({answer.returncode}):\n{output}")
        return answer

    def sql(self, database: str, query: str, **variables: str) -> list[list[str]]:
        """Rows of a query on one of the mesh's databases, run by `psql` in the PostgreSQL
        container as an operator would (no database port is published). `variables` are psql
        variables, quoted by psql where the query says `:'name'` (so the query goes in on
        standard input: psql does not interpolate a `--command`)."""
        settings = [f"--set={name}={value}" for name, value in variables.items()]
        answer = subprocess.run(
            [
                docker_cli(), "exec", "--interactive", self.container("postgres"),
                "psql", "--username=mesh", f"--dbname={database}", "--no-align", "--tuples-only",
                "--field-separator=\t", "--set=ON_ERROR_STOP=1", "--quiet", *settings,
            ],
            input=query, capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        return [line.split("\t") for line in answer.stdout.splitlines() if line]

    def sql_value(self, database: str, query: str, **variables: str) -> str:
        ((value,),) = self.sql(database, query, **variables)
        return value

    def up(self, *services: str) -> None:
        """Starts (or restarts what stopped) and waits until every healthcheck passes."""
        self.compose("up", "--no-build", "--detach", "--wait", *services)
        published = self.compose("port", "gateway", "8000").stdout.strip()
        self.gateway_url = f"http://{published}"

    def save_logs(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for service in (*self.names, "postgres", "rabbitmq", "redis"):
            (directory / f"{service}.log").write_text(self.logs(service))


@contextmanager
def container_mesh(directory: Path) -> Iterator[ContainerMesh]:
    """The mesh of compose.yaml, started for one test session and removed after it; the
    containers' logs stay in `directory`."""
    images = [app_image(name) for name in DEPLOYABLES]
    images += [infrastructure_image(name) for name in ("POSTGRES", "RABBITMQ", "REDIS")]
    require_images(images)
    key = write_signing_key(directory)
    key.chmod(0o644)  # bind-mounted into the users container, which runs as 10001
    env = {
        **os.environ,
        **image_settings(),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(16),
        "RABBITMQ_PASSWORD": secrets.token_urlsafe(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(16),
        "GATEWAY_PORT": "0",
        "RABBITMQ_MANAGEMENT_PORT": "0",
        "JWT_PRIVATE_KEY_FILE": str(key),
    }
    env.pop("COMPOSE_FILE", None)
    env.pop("COMPOSE_PROJECT_NAME", None)
    mesh = ContainerMesh(
        project=f"meshtest-{secrets.token_hex(4)}", env=env, jwt_private_key_file=key
    )
    try:
        mesh.up()
        yield mesh
    finally:
        mesh.save_logs(directory)
        mesh.compose("down", "--volumes", "--remove-orphans", "--timeout", "30", check=False)
