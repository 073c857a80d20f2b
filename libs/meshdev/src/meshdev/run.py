"""`make run`: preflight checks, databases, migrations, then every process of the mesh.

Runs in the foreground with prefixed, coloured logs; Ctrl-C or SIGTERM stops every process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
from honcho.manager import Manager

from meshdev.mesh import MESH, Wiring
from meshdev.processes import production_command
from meshdev.stack import write_signing_key

ROOT = Path(__file__).resolve().parents[4]
DEV_DIR = ROOT / ".dev"
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432")
RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")

HOW_TO_START = {
    "PostgreSQL": "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) "
    "main start`, or run the containerised mesh with `make up` (docker compose)",
    "RabbitMQ": "start it with `rabbitmq-server -detached && rabbitmqctl await_startup`, "
    "or run the containerised mesh with `make up` (docker compose)",
}


def _reachable(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or default_port), 2
        ):
            return True
    except OSError:
        return False


def preflight() -> None:
    for name, url, port in (("PostgreSQL", POSTGRES_URL, 5432), ("RabbitMQ", RABBITMQ_URL, 5672)):
        if not _reachable(url, port):
            sys.exit(f"make run: {name} is not reachable at {url} - {HOW_TO_START[name]}.")


async def create_missing_databases(names: list[str]) -> None:
    admin = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1) + "/postgres"
    connection = await asyncpg.connect(admin)
    try:
        existing = {
            row["datname"] for row in await connection.fetch("SELECT datname FROM pg_database")
        }
        for name in names:
            if name not in existing:
                await connection.execute(f'CREATE DATABASE "{name}"')
                print(f"make run: created database {name}")
    finally:
        await connection.close()


def ensure_dev_key() -> Path:
    key_file = DEV_DIR / "jwt-ed25519.pem"
    if not key_file.exists():
        write_signing_key(DEV_DIR)
        print(f"make run: generated a local signing key in {key_file.relative_to(ROOT)}")
    return key_file


def local_wiring() -> Wiring:
    return Wiring(
        ports={d.name: int(os.environ.get(f"{d.name.upper()}_PORT", d.port)) for d in MESH},
        databases={d.name: d.database for d in MESH if d.database},
        postgres_url=POSTGRES_URL,
        rabbitmq_url=RABBITMQ_URL,
        jwt_private_key_file=ensure_dev_key(),
    )


def migrate(wiring: Wiring) -> None:
    asyncio.run(create_missing_databases(list(wiring.databases.values())))
    for deployable in MESH:
        if deployable.database is None:
            continue
        env = {**os.environ, **wiring.env_for(deployable)}
        subprocess.run([sys.executable, "-m", f"{deployable.package}.migrate"], env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--migrate-only", action="store_true")
    args = parser.parse_args()

    preflight()
    wiring = local_wiring()
    migrate(wiring)
    if args.migrate_only:
        return
    manager = Manager()
    for deployable in MESH:
        # The caller's environment wins, so `make run` variables reach every process.
        env = {**wiring.env_for(deployable), **os.environ}
        env["PORT"] = str(wiring.ports[deployable.name])
        env["OTEL_SERVICE_NAME"] = deployable.name
        command = production_command(deployable.package)
        command[0] = str(Path(sys.executable).parent / command[0])
        manager.add_process(deployable.name, shlex.join(command), env=env, cwd=str(ROOT))
    manager.loop()
    sys.exit(manager.returncode)


if __name__ == "__main__":
    main()
