"""What goes into an image works on its own: the Dockerfile's exact `uv sync` into a fresh
virtualenv (no sources, no dev tools), then the migration and the production command from that
virtualenv, configured with the environment compose gives the container.

It needs no Docker engine and covers everything in the image above the base OS layer;
tests/containers run the images themselves.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import make_url

from meshdev.deployfiles import ROOT, dockerfile_stages
from meshdev.mesh import Deployable
from meshdev.postgres import asyncpg_dsn, create_database, drop_database, sqlalchemy_url
from meshdev.processes import free_port, production_command

RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
DEV_TOOLS = ("pytest", "ruff", "mypy", "meshdev")
# `uv run` tells its children where uv is; plain pytest finds it on PATH.
UV = os.environ.get("UV") or shutil.which("uv") or "uv"


def image_sync_command(deployable: Deployable) -> list[str]:
    """The `uv sync` of the deployable's build stage, exactly as the Dockerfile runs it
    (`install-deployable <member>`, deploy/images/install-deployable.sh)."""
    run = dockerfile_stages(ROOT / "Dockerfile")[f"{deployable.name}-build"].last("RUN") or ""
    member = shlex.split(run)[-1]
    script = (ROOT / "deploy" / "images" / "install-deployable.sh").read_text()
    sync = next(line for line in script.splitlines() if line.startswith("uv sync "))
    return shlex.split(sync.replace('"$member"', member))


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """One virtualenv per deployable, built like the image's."""
    built: dict[str, Path] = {}
    yield built
    for path in built.values():
        shutil.rmtree(path, ignore_errors=True)


def venv_for(deployable: Deployable, built: dict[str, Path], tmp: Path) -> Path:
    if deployable.name not in built:
        venv = tmp / f"venv-{deployable.name}"
        env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_COMPILE_BYTECODE": "0"}
        subprocess.run(
            [UV, *image_sync_command(deployable)[1:], "--quiet"],
            cwd=ROOT,
            env=env,
            check=True,
        )
        built[deployable.name] = venv
    return built[deployable.name]


def _python(venv: Path, code: str, *, env: dict[str, str] | None = None) -> str:
    # Run outside the repository, so nothing can be imported from the sources.
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code],
        cwd=venv,
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_image_holds_its_code_and_no_dev_tools(
    deployable: Deployable, image_venv: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    venv = venv_for(deployable, image_venv, tmp_path_factory.mktemp("image"))
    location = _python(venv, f"import {deployable.package}; print({deployable.package}.__file__)")
    assert location.startswith(str(venv)), f"{deployable.package} is not installed: {location}"
    found = _python(
        venv,
        "import importlib.util as u; "
        f"print([m for m in {DEV_TOOLS!r} if u.find_spec(m) is not None])",
    )
    assert found == "[]", f"dev tools in the image: {found}"


# ---- running it ---------------------------------------------------------------------------------


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True)


@pytest.fixture
def container_env(
    deployable: Deployable, compose: dict[str, Any], tmp_path: Path
) -> Iterator[dict[str, str]]:
    """The compose environment of the deployable, pointed at throw-away local resources."""
    env = {k: str(v) for k, v in compose["services"][deployable.name]["environment"].items()}
    env = {k: v for k, v in env.items() if not k.startswith("OTEL_EXPORTER_")}
    database = vhost = user = None
    try:
        if "DATABASE_URL" in env:
            database = asyncio.run(create_database(f"image_{deployable.name}"))
            # Production settings insist on a password; the test server trusts local clients.
            url = make_url(sqlalchemy_url(database)).set(password="unused-trust-auth")
            env["DATABASE_URL"] = url.render_as_string(hide_password=False)
        if "RABBITMQ_URL" in env:
            # Production settings refuse the guest account: a throw-away user and vhost.
            vhost = f"image_{secrets.token_hex(4)}"
            # Hex: a URL-safe token may start with "-", which rabbitmqctl reads as an option.
            password = secrets.token_hex(16)
            _rabbitmqctl("add_vhost", vhost)
            _rabbitmqctl("add_user", vhost, password)
            user = vhost
            _rabbitmqctl("set_permissions", "-p", vhost, vhost, ".*", ".*", ".*")
            broker = urlsplit(RABBITMQ_URL)
            env["RABBITMQ_URL"] = (
                f"amqp://{vhost}:{password}@{broker.hostname}:{broker.port}/{vhost}"
            )
        if "JWT_PRIVATE_KEY_FILE" in env:
            key = tmp_path / "signing-key.pem"
            key.write_bytes(
                Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            env["JWT_PRIVATE_KEY_FILE"] = str(key)
        env.update(HOST="127.0.0.1", PORT=str(free_port()), WEB_CONCURRENCY="1")
        yield env
    finally:
        if database is not None:
            asyncio.run(drop_database(database))
        if vhost is not None:
            _rabbitmqctl("delete_vhost", vhost)
        if user is not None:
            _rabbitmqctl("delete_user", user)


def test_the_image_migrates_and_serves_with_the_compose_environment(
    deployable: Deployable,
    container_env: dict[str, str],
    image_venv: dict[str, Path],
    tmp_path: Path,
) -> None:
    venv = venv_for(deployable, image_venv, tmp_path)
    path = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin"}
    if deployable.database is not None:
        migrate = subprocess.run(
            [str(venv / "bin" / "python"), "-m", f"{deployable.package}.migrate"],
            cwd=tmp_path,
            env={**container_env, **path},
            capture_output=True,
            text=True,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stderr
        revision = asyncio.run(_alembic_revision(container_env["DATABASE_URL"]))
        assert revision is not None

    log = tmp_path / "serve.log"
    command = production_command(deployable.package)
    with log.open("wb") as output:
        server = subprocess.Popen(
            [str(venv / "bin" / command[0]), *command[1:]],
            cwd=tmp_path,
            env={**container_env, **path},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{container_env['PORT']}/healthz"
        deadline = time.monotonic() + 30
        status = None
        while status != 200 and time.monotonic() < deadline and server.poll() is None:
            try:
                status = httpx.get(url, timeout=1).status_code
            except httpx.HTTPError:
                time.sleep(0.2)
        assert status == 200, log.read_text()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        code = server.wait(30)
    assert code == 0, log.read_text()


async def _alembic_revision(database_url: str) -> str | None:
    url = make_url(database_url)
    connection = await asyncpg.connect(asyncpg_dsn(str(url.database)))
    try:
        revision: str | None = await connection.fetchval("SELECT version_num FROM alembic_version")
        return revision
    finally:
        await connection.close()
