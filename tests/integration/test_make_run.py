"""`make run` as a person runs it: its preflight says in one line what is missing, a terminal
shows readable lines, and nothing it started outlives it, however it ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from meshdev.mesh import MESH
from meshdev.postgres import drop_database
from meshdev.processes import ServiceProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 120.0  # migrations and four gunicorns on a busy two-core machine
GONE_WITHIN = 30.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TIME = r"[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}"


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


# ---- nothing outlives it -------------------------------------------------------------------


class Terminal:
    """A pseudo-terminal whose screen is read in the background, as a terminal window does."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        self.screen = bytearray()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.screen += os.read(self.master, 65536)
                except OSError:  # every process on the other side is gone
                    return

    def text(self) -> str:
        return ANSI.sub("", bytes(self.screen).decode(errors="replace"))

    def close(self) -> None:
        """Closing the window: the kernel hangs up the terminal of everything running in it."""
        if self._closing.is_set():
            return
        self._closing.set()
        self._reader.join(5)
        os.close(self.master)
        os.close(self.slave)


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


def _supervisor(make: int) -> int:
    """`python -m meshdev.run` among make's descendants (make → uv → python)."""
    (pid,) = [
        p
        for p in _descendants(make)
        if b"meshdev.run" in Path(f"/proc/{p}/cmdline").read_bytes()
        and Path(f"/proc/{p}/exe").resolve().name.startswith("python")
    ]
    return pid


@dataclass
class MakeRun:
    make: asyncio.subprocess.Process
    terminal: Terminal
    ports: dict[str, int]

    def mesh_processes(self) -> list[int]:
        return _descendants(self.make.pid)


StartMakeRun = Callable[..., Awaitable[MakeRun]]


@pytest.fixture
async def start_make_run(rabbitmq_url: str) -> AsyncIterator[StartMakeRun]:
    """Starts `make run` in a terminal, on free ports and throw-away databases, and waits until
    the gateway is ready. Afterwards, anything a failed test left running is killed by pid."""
    ports = {d.name: free_port() for d in MESH}
    databases = {d.name: f"makerun_{d.name}_{os.urandom(4).hex()}" for d in MESH if d.database}
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("LOG_FORMAT", "FORCE_COLOR", "NO_COLOR")
        },
        **{f"{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **{f"{name.upper()}_DATABASE": database for name, database in databases.items()},
        "RABBITMQ_URL": rabbitmq_url,
        "WEB_CONCURRENCY": "1",
    }
    runs: list[MakeRun] = []
    started: dict[int, str | None] = {}

    async def start(*, make_leads_the_terminal: bool = False) -> MakeRun:
        """By default make runs in a session without a controlling terminal, as when a shell
        leads the terminal's session: killing make then hangs nothing up. Leading it, as in
        `ssh -t host make run` or a window running make, the terminal's end reaches make only."""
        terminal = Terminal()
        make = await asyncio.create_subprocess_exec(
            *["setsid", *(["--ctty"] if make_leads_the_terminal else []), "make"],
            *["--no-print-directory", "run"],
            cwd=ROOT,
            env=env,
            stdin=terminal.slave,
            stdout=terminal.slave,
            stderr=terminal.slave,
        )
        running = MakeRun(make, terminal, ports)
        runs.append(running)
        await _wait_ready(running)
        started.update({pid: _started_at(pid) for pid in running.mesh_processes()})
        return running

    try:
        yield start
    finally:
        for running in runs:
            started.update({pid: _started_at(pid) for pid in running.mesh_processes()})
        _kill_leftovers(started)
        for running in runs:
            with contextlib.suppress(ProcessLookupError):
                running.make.kill()
            await running.make.wait()
            running.terminal.close()
        for database in databases.values():
            await drop_database(database)


async def _wait_ready(running: MakeRun) -> None:
    url = f"http://127.0.0.1:{running.ports['gateway']}/readyz"
    deadline = time.monotonic() + READY_WITHIN
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if running.make.returncode is not None:
                raise AssertionError(f"make run ended early:\n{running.terminal.text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the mesh was not ready:\n{running.terminal.text()[-4000:]}")


def _kill_make(running: MakeRun) -> None:
    running.make.kill()


def _kill_the_supervisor(running: MakeRun) -> None:
    os.kill(_supervisor(running.make.pid), signal.SIGKILL)


def _hang_up_the_job(running: MakeRun) -> None:
    """What a shell does when its terminal closes: SIGHUP to each of its jobs' process group."""
    os.killpg(running.make.pid, signal.SIGHUP)


def _close_the_terminal(running: MakeRun) -> None:
    running.terminal.close()


ENDINGS: dict[str, tuple[Callable[[MakeRun], None], bool]] = {
    # ending: (what ends it, whether make leads the terminal's session)
    "make is SIGKILLed": (_kill_make, False),
    "make run's supervisor is SIGKILLed": (_kill_the_supervisor, False),
    "the shell's terminal is closed": (_hang_up_the_job, False),
    # The kernel hangs up make alone, and make waits for its recipe to end.
    "the terminal make leads is closed": (_close_the_terminal, True),
}


@pytest.mark.parametrize("ending", ENDINGS)
async def test_nothing_make_run_started_outlives_it(
    start_make_run: StartMakeRun, ending: str
) -> None:
    end, make_leads_the_terminal = ENDINGS[ending]
    make_run = await start_make_run(make_leads_the_terminal=make_leads_the_terminal)
    mesh = make_run.mesh_processes()
    assert len(mesh) >= 2 + 2 * len(MESH), "uv, meshdev.run, and a master and worker each"

    end(make_run)

    deadline = time.monotonic() + GONE_WITHIN
    while time.monotonic() < deadline:
        if not [p for p in mesh if _alive(p)] and all(map(_free, make_run.ports.values())):
            break
        await asyncio.sleep(0.2)
    assert [p for p in mesh if _alive(p)] == []
    assert {name: _free(port) for name, port in make_run.ports.items()} == dict.fromkeys(
        make_run.ports, True
    )


async def test_a_terminal_shows_one_readable_line_per_record(
    start_make_run: StartMakeRun,
) -> None:
    make_run = await start_make_run()
    text = make_run.terminal.text()
    lines = text.splitlines()

    for deployable in MESH:
        started = f"{TIME} INFO +{deployable.name}/[0-9]+ uvicorn.error +Application startup"
        assert any(re.match(started, line) for line in lines), deployable.name
    assert not [line for line in lines if line.lstrip().startswith("{")], "no JSON lines"
    assert "\x1b[32mINFO" in bytes(make_run.terminal.screen).decode(errors="replace")


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
