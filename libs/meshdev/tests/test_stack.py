"""`running_mesh`: the gateway's readiness is awaited only once its upstreams are ready; and
when one deployable cannot start, its error comes out (in the group of the deployables'
start-ups), and nothing begun for the others is left running."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from meshdev import stack
from meshdev.mesh import Deployable
from meshdev.processes import ServiceProcess
from meshdev.stack import running_mesh


def _gunicorns_of_this_process() -> list[int]:
    """Processes this test process started that still run gunicorn."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            command = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == os.getpid() and b"gunicorn" in command:
            found.append(int(entry.name))
    return found


async def test_a_deployable_that_cannot_start_stops_the_whole_mesh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users fails while notifications, already migrated, has not started its process yet:
    that process must not start after the mesh was torn down. (Not the gateway: its readiness
    is awaited only once its upstreams are ready, by which time they have all started.)"""
    notifications_migrated = threading.Event()
    migrate = stack._migrate
    start = ServiceProcess.start
    wait_ready = ServiceProcess.wait_ready

    def start_users_broken(process: ServiceProcess) -> ServiceProcess:
        if process.package == "users_service":
            # Its migration ran with good settings; the process refuses these and exits.
            process.env["ACCESS_TOKEN_TTL_SECONDS"] = "many"
        return start(process)

    def migrate_then_linger(
        deployable: Deployable, env: Mapping[str, str], bin_dir: Path | None
    ) -> None:
        migrate(deployable, env, bin_dir)
        if deployable.name == "notifications":
            notifications_migrated.set()
            time.sleep(5)

    def users_seen_failing_late(process: ServiceProcess, **options: Any) -> None:
        if process.package == "users_service":
            notifications_migrated.wait(60)
        wait_ready(process, **options)

    monkeypatch.setattr(stack, "_migrate", migrate_then_linger)
    monkeypatch.setattr(ServiceProcess, "start", start_users_broken)
    monkeypatch.setattr(ServiceProcess, "wait_ready", users_seen_failing_late)

    with pytest.raises(ExceptionGroup) as failed:
        async with running_mesh(tmp_path, names=("users", "notifications")):
            pytest.fail("the mesh came up with a users service that cannot start")
    assert failed.group_contains(RuntimeError, match="users_service exited early")

    await asyncio.sleep(8)  # past the moment notifications would have started
    assert _gunicorns_of_this_process() == []


async def test_the_gateways_readiness_is_timed_from_its_upstreams(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its processes start together, but the gateway's 30 s to become ready (its /readyz asks
    every upstream) begin when the services are ready, however long their start took."""
    slow_start = 3.0  # seconds each service takes on top of its own start
    waits: dict[str, tuple[float, float]] = {}
    started: dict[str, float] = {}
    wait_ready = ServiceProcess.wait_ready
    start = ServiceProcess.start

    def timed_start(process: ServiceProcess) -> None:
        started[process.package] = time.monotonic()
        start(process)

    def timed_wait_ready(process: ServiceProcess, **options: Any) -> None:
        begun = time.monotonic()
        if process.package != "mesh_gateway":
            time.sleep(slow_start)
        wait_ready(process, **options)
        waits[process.package] = (begun, time.monotonic())

    monkeypatch.setattr(ServiceProcess, "start", timed_start)
    monkeypatch.setattr(ServiceProcess, "wait_ready", timed_wait_ready)
    async with running_mesh(tmp_path, names=("users", "orders", "notifications", "gateway")):
        pass

    services = [waits[p] for p in ("users_service", "orders_service", "notifications_service")]
    gateway_begun, _ = waits["mesh_gateway"]
    assert gateway_begun >= max(ready for _, ready in services)
    # Started with the others, not after them: only its readiness waits.
    assert started["mesh_gateway"] < min(ready for _, ready in services)
