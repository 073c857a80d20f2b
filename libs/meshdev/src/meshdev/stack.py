"""A whole mesh (or part of it) for one test: throw-away databases and RabbitMQ vhost, every
deployable under its production command on free ports, wired by `meshdev.mesh`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshdev.mesh import MESH, Deployable, Wiring
from meshdev.postgres import ADMIN_DSN, asyncpg_dsn, connected, create_database, drop_database
from meshdev.processes import ServiceProcess, free_port
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost

# The machine's PostgreSQL (100 connections) is shared by everyone's test runs: processes
# under test keep few idle connections (overflow connections close after use).
SMALL_POOLS = {"DATABASE_POOL_SIZE": "2", "DATABASE_MAX_OVERFLOW": "8"}


class MeshTarget(Protocol):
    """What a test of the whole mesh sees of it, wherever it runs: processes started here
    (`RunningMesh`) or containers (`meshdev.containers.ContainerMesh`)."""

    @property
    def names(self) -> Sequence[str]: ...

    @property
    def jwt_private_key_file(self) -> Path: ...

    def url(self, name: str) -> str: ...

    def public_url(self, name: str) -> str: ...

    def logs(self, name: str) -> str: ...


@dataclass
class RunningMesh:
    wiring: Wiring
    vhost: str
    processes: dict[str, ServiceProcess] = field(default_factory=dict)

    @property
    def names(self) -> Sequence[str]:
        return tuple(self.processes)

    @property
    def jwt_private_key_file(self) -> Path:
        return Path(self.wiring.jwt_private_key_file)

    def logs(self, name: str) -> str:
        return self.processes[name].logs()

    def url(self, name: str) -> str:
        return self.wiring.url(name)

    def public_url(self, name: str) -> str:
        """Where clients reach `name`'s public API: through the gateway when it runs."""
        return self.url("gateway") if "gateway" in self.processes else self.url(name)

    def database_url(self, name: str) -> str:
        """asyncpg DSN of a deployable's database, direct (never through a fault proxy), for
        tests that look at the data as an operator would."""
        return asyncpg_dsn(self.wiring.databases[name])

    async def fetch(self, name: str, sql: str, *args: object) -> list[asyncpg.Record]:
        """Rows of a query on a deployable's database (direct), as an operator would run it."""
        async with connected(self.database_url(name)) as connection:
            return list(await connection.fetch(sql, *args))

    async def fetchval(self, name: str, sql: str, *args: object) -> Any:
        rows = await self.fetch(name, sql, *args)
        return rows[0][0]


def ed25519_pem() -> bytes:
    """A fresh token-signing key as the services read it (PKCS#8 PEM)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_signing_key(directory: Path) -> Path:
    """A fresh Ed25519 signing key for the users service, readable by its owner only."""
    directory.mkdir(parents=True, exist_ok=True)
    key_file = directory / "jwt-ed25519.pem"
    key_file.touch(mode=0o600)
    key_file.write_bytes(ed25519_pem())
    return key_file


def _via_port(url: str, port: int | None) -> str:
    if port is None:
        return url
    scheme_and_user, _, _ = url.rpartition("@")
    return f"{scheme_and_user}@127.0.0.1:{port}"


def _migrate(deployable: Deployable, env: Mapping[str, str], bin_dir: Path | None) -> None:
    python = str(bin_dir / "python") if bin_dir else sys.executable
    subprocess.run(
        [python, "-m", f"{deployable.package}.migrate"],
        env={**os.environ, **env},
        check=True,
        capture_output=True,
    )


@asynccontextmanager
async def running_mesh(
    directory: Path,
    *,
    names: Sequence[str] = ("users", "orders", "notifications"),
    broker_port: int | None = None,
    postgres_port: int | None = None,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    bin_dir: Path | None = None,
) -> AsyncIterator[RunningMesh]:
    """Starts `names` (side by side) and removes everything after.
    `broker_port` / `postgres_port` point the services at another port (a fault proxy) for the
    broker / the database; throw-away databases and migrations always go direct. `bin_dir`
    runs another environment's code (its `python` and `gunicorn`) instead of this one's."""
    deployables = [d for d in MESH if d.name in names]
    async with AsyncExitStack() as stack:
        vhost = await create_vhost("mesh_test")
        stack.push_async_callback(delete_vhost, vhost)
        databases: dict[str, str] = {}
        for deployable in deployables:
            if deployable.database is not None:
                databases[deployable.name] = await create_database(f"{deployable.database}_test")
                stack.push_async_callback(drop_database, databases[deployable.name])
        direct_postgres = ADMIN_DSN.rpartition("/")[0].replace(
            "postgresql://", "postgresql+asyncpg://", 1
        )
        wiring = Wiring(
            ports={d.name: free_port() for d in MESH},
            databases=databases,
            postgres_url=_via_port(direct_postgres, postgres_port),
            rabbitmq_url=amqp_url(vhost, port=broker_port),
            jwt_private_key_file=write_signing_key(directory),
            environment="test",
        )
        mesh = RunningMesh(wiring=wiring, vhost=vhost)
        ready = {deployable.name: asyncio.Event() for deployable in deployables}

        async def start(deployable: Deployable) -> None:
            process_env = {**wiring.env_for(deployable), **SMALL_POOLS, **(env or {})}
            if deployable.database is not None:
                direct = dataclasses.replace(wiring, postgres_url=direct_postgres)
                migrate_env = {
                    **process_env,
                    "DATABASE_URL": direct.env_for(deployable)["DATABASE_URL"],
                }
                await asyncio.to_thread(_migrate, deployable, migrate_env, bin_dir)
            process = ServiceProcess(
                deployable.package,
                env=process_env,
                log_path=directory / f"{deployable.name}.log",
                port=wiring.ports[deployable.name],
                workers=workers,
                bin_dir=bin_dir,
            )
            # In a thread: a fault proxy serving on this event loop must keep forwarding the
            # service's goodbyes (AMQP close, consumer cancels), or its graceful stop stalls.
            stack.push_async_callback(asyncio.to_thread, process.stop)
            process.start()
            mesh.processes[deployable.name] = process
            # A readiness that asks its peers (the gateway's) is timed from theirs: two meshes
            # starting at once on two cores took the gateway past its 30 s while it waited for
            # services that were still migrating.
            for name in deployable.ready_after:
                if name in ready:
                    await ready[name].wait()
            await asyncio.to_thread(process.wait_ready)
            ready[deployable.name].set()

        # All at once, as a cluster starts them: no process waits for another to start (each
        # retries its peers), and a mesh is up in the time of its slowest member. When one
        # fails, the task group cancels the others and waits for them, so none starts a
        # process after this stack has been unwound.
        async with asyncio.TaskGroup() as starting:
            for deployable in deployables:
                starting.create_task(start(deployable))
        yield mesh
