"""The dev overlay's PostgreSQL init script, run against a private PostgreSQL server: one role
(with the password from its Secret) and one database per service.

The server is started for this test only, on a Unix socket in a temporary directory, with
password authentication, and removed afterwards; the machine's shared server is not touched.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshdev.deployfiles import Cluster, container_env
from meshdev.mesh import Deployable

SUPERUSER_PASSWORD = "private-test-server"


def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries are not installed"
    return Path(found[-1]).parent


def _as_server_user(command: list[str]) -> list[str]:
    # initdb refuses to run as root; the server then runs as the `postgres` system user.
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def private_server() -> Iterator[Path]:
    """A throw-away server; yields the directory of its Unix socket."""
    directory = Path(tempfile.mkdtemp(prefix="mesh-dev-pg-"))
    directory.chmod(0o777)
    data, password_file = directory / "data", directory / "superuser-password"
    password_file.write_text(SUPERUSER_PASSWORD)
    password_file.chmod(0o644)
    binaries = _postgres_bin()
    subprocess.run(
        _as_server_user(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={password_file}",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses='' -k {directory} -c fsync=off"
    subprocess.run(
        _as_server_user(
            [
                str(binaries / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(directory / "server.log"),
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        yield directory
    finally:
        subprocess.run(
            _as_server_user([str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


def _psql(socket: Path, user: str, password: str, database: str, sql: str) -> str:
    return subprocess.run(
        ["psql", "-h", str(socket), "-U", user, "-d", database, "-At", "-c", sql],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def initialised_server(clusters: dict[str, Cluster], private_server: Path) -> Path:
    """The private server after the dev init script ran, as the image runs it on first start."""
    dev = clusters["dev"]
    init = dev.get("ConfigMap", "postgresql-init")
    assert init is not None
    statefulset = dev.get("StatefulSet", "postgresql")
    assert statefulset is not None
    env = container_env(statefulset["spec"]["template"]["spec"]["containers"][0], dev)
    script = private_server / "init.sh"
    script.write_text(init["data"]["10-mesh-databases.sh"])
    subprocess.run(
        ["sh", str(script)],
        env={
            **os.environ,
            **env,
            "POSTGRES_USER": "postgres",
            "PGHOST": str(private_server),
            "PGPASSWORD": SUPERUSER_PASSWORD,
        },
        check=True,
        capture_output=True,
    )
    return private_server


def test_the_init_script_creates_a_role_and_database_per_service(
    clusters: dict[str, Cluster], migrating: Deployable, initialised_server: Path
) -> None:
    dev = clusters["dev"]
    # The service connects with its own Secret's credentials, the way its DATABASE_URL does.
    deployment = dev.get("Deployment", migrating.name)
    assert deployment is not None
    service_env = container_env(deployment["spec"]["template"]["spec"]["containers"][0], dev)
    user, password = service_env["DATABASE_USER"], service_env["DATABASE_PASSWORD"]
    database = service_env["DATABASE_NAME"]
    assert database == migrating.database
    owner = _psql(
        initialised_server,
        user,
        password,
        database,
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()",
    )
    assert owner == user
