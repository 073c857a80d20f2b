"""The whole mesh started as production runs it, on throw-away databases and free ports.

Used by the integration tests and the benchmarks: every deployable of `MESH` is migrated with its
migration command and served by its production command, wired exactly as `make run` wires it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from meshdev.mesh import MESH, Deployable, Wiring
from meshdev.postgres import ADMIN_DSN, create_database, drop_database
from meshdev.processes import ServiceProcess, free_port


class LocalMesh:
    """`async with LocalMesh(...) as mesh:` → every process ready; left clean afterwards."""

    def __init__(
        self,
        *,
        log_dir: Path,
        jwt_private_key_file: Path,
        rabbitmq_url: str,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
        only: tuple[str, ...] | None = None,
        postgres_url: str | None = None,
    ) -> None:
        """`postgres_url` (postgresql+asyncpg://user@host:port) lets a fault test put a proxy
        between the services and PostgreSQL; throw-away databases are always made directly."""
        self.log_dir = log_dir
        self.deployables: tuple[Deployable, ...] = tuple(
            d for d in MESH if only is None or d.name in only
        )
        self.extra_env = dict(env or {})
        self.workers = workers
        self.wiring = Wiring(
            ports={d.name: free_port() for d in MESH},
            databases={},
            postgres_url=postgres_url
            or ADMIN_DSN.rpartition("/")[0].replace("postgresql://", "postgresql+asyncpg://", 1),
            rabbitmq_url=rabbitmq_url,
            jwt_private_key_file=jwt_private_key_file,
            environment="test",
        )
        self.processes: dict[str, ServiceProcess] = {}

    def url(self, name: str) -> str:
        return self.wiring.url(name)

    def env_for(self, deployable: Deployable) -> dict[str, str]:
        return {**self.wiring.env_for(deployable), **self.extra_env}

    async def start(self) -> LocalMesh:
        databases = {
            d.name: await create_database(f"it_{d.name}") for d in self.deployables if d.database
        }
        self.wiring = dataclasses.replace(self.wiring, databases=databases)
        for deployable in self.deployables:
            if deployable.database:
                await asyncio.to_thread(self._migrate, deployable)
        for deployable in self.deployables:
            self.processes[deployable.name] = self.process(deployable).start()
            await asyncio.to_thread(self.processes[deployable.name].wait_ready)
        return self

    def process(self, deployable: Deployable) -> ServiceProcess:
        """A (not yet started) process of a deployable, e.g. to start it again after a kill."""
        return ServiceProcess(
            deployable.package,
            env=self.env_for(deployable),
            log_path=self.log_dir / f"{deployable.name}.log",
            port=self.wiring.ports[deployable.name],
            workers=self.workers,
        )

    def _migrate(self, deployable: Deployable) -> None:
        subprocess.run(
            [sys.executable, "-m", f"{deployable.package}.migrate"],
            env={**os.environ, **self.env_for(deployable)},
            check=True,
            capture_output=True,
        )

    async def stop(self) -> None:
        for name in reversed(list(self.processes)):
            await asyncio.to_thread(self.processes[name].stop)
        for database in self.wiring.databases.values():
            await drop_database(database)

    async def __aenter__(self) -> LocalMesh:
        try:
            return await self.start()
        except BaseException:
            await self.stop()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
