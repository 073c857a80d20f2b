"""`make run`'s preflight says in one line what is missing; the processes it starts stop with
their parent."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshdev.processes import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
GONE_WITHIN = 30.0


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


# ---- nothing outlives its parent -----------------------------------------------------------


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name: state, ppid, ..., start time (index 19)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _alive(pid: int) -> bool:
    stat = _stat(pid)
    return bool(stat) and stat[0] != "Z"


def _started_at(pid: int) -> str | None:
    stat = _stat(pid)
    return stat[19] if stat else None


def _descendants(pid: int) -> list[int]:
    parents = {
        int(path.name): int(stat[1])
        for path in Path("/proc").glob("[0-9]*")
        if (stat := _stat(int(path.name)))
    }
    found, pending = [], [pid]
    while pending:
        parent = pending.pop()
        children = [child for child, its_parent in parents.items() if its_parent == parent]
        found += children
        pending += children
    return found


def _kill_leftovers(started: dict[int, str | None]) -> None:
    """SIGKILL what a failed test left running: by pid, and only the processes it started
    (same start time: not a pid reused since)."""
    for pid, start in started.items():
        if _alive(pid) and _started_at(pid) == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_workers_stop_when_their_master_is_killed(log_dir: Path) -> None:
    """gunicorn's uvicorn workers do not watch their master: without meshkit's `post_fork` hook,
    a SIGKILLed master leaves them serving on its socket."""
    gateway = ServiceProcess(
        "mesh_gateway",
        env={
            "USERS_URL": f"http://127.0.0.1:{free_port()}",  # nothing behind: /healthz only
            "ORDERS_URL": "",
            "NOTIFICATIONS_URL": "",
        },
        log_path=log_dir / "gateway.log",
        workers=2,
    )
    gateway.start()
    workers: dict[int, str | None] = {}
    try:
        gateway.wait_ready(path="/healthz")
        assert gateway.process is not None
        workers = {pid: _started_at(pid) for pid in _descendants(gateway.process.pid)}
        assert len(workers) == 2

        os.kill(gateway.process.pid, signal.SIGKILL)  # the master alone
        gateway.process.wait(5)

        deadline = time.monotonic() + GONE_WITHIN
        while [p for p in workers if _alive(p)] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in workers if _alive(p)] == []
        assert _free(gateway.port)
    finally:
        gateway.kill()
        _kill_leftovers(workers)
