"""`make run`: preflight checks, databases, migrations, then every process of the mesh.

Runs in the foreground. Each process's log lines are passed through whole: readable coloured
lines (`LOG_FORMAT=console`) when stdout is a terminal, JSON lines otherwise, so
`make run | jq` works; `make run`'s own messages go to stderr.

Ctrl-C, SIGTERM, SIGHUP or the terminal closing stop every process gracefully (a second Ctrl-C
kills them), and so does the end of whatever started us: make (the Makefile passes its pid as
`--watch-pid`) or our own parent, even when SIGKILLed. If we are SIGKILLed ourselves, the kernel
stops the gunicorn masters (`meshkit.lifetime`), and their workers stop with them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from meshdev.mesh import MESH, Wiring
from meshdev.postgres import connected
from meshdev.processes import production_command
from meshdev.stack import write_signing_key
from meshkit.lifetime import die_with_parent

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


def say(message: str) -> None:
    """`make run`'s own messages: on stderr, so stdout carries nothing but log lines."""
    with contextlib.suppress(OSError):  # the terminal may be gone
        print(f"make run: {message}", file=sys.stderr, flush=True)


def preflight() -> None:
    for name, url, port in (("PostgreSQL", POSTGRES_URL, 5432), ("RabbitMQ", RABBITMQ_URL, 5672)):
        if not _reachable(url, port):
            sys.exit(f"make run: {name} is not reachable at {url} - {HOW_TO_START[name]}.")


async def create_missing_databases(names: list[str]) -> None:
    admin = POSTGRES_URL.replace("postgresql+asyncpg://", "postgresql://", 1) + "/postgres"
    async with connected(admin) as connection:
        existing = {
            row["datname"] for row in await connection.fetch("SELECT datname FROM pg_database")
        }
        for name in names:
            if name not in existing:
                await connection.execute(f'CREATE DATABASE "{name}"')
                say(f"created database {name}")


def ensure_dev_key() -> Path:
    key_file = DEV_DIR / "jwt-ed25519.pem"
    if not key_file.exists():
        write_signing_key(DEV_DIR)
        say(f"generated a local signing key in {key_file.relative_to(ROOT)}")
    return key_file


def local_wiring() -> Wiring:
    """The contract's ports and database names, unless `<NAME>_PORT` / `<NAME>_DATABASE` say
    otherwise (a second mesh beside the first, or a test's throw-away databases)."""
    return Wiring(
        ports={d.name: int(os.environ.get(f"{d.name.upper()}_PORT", d.port)) for d in MESH},
        databases={
            d.name: os.environ.get(f"{d.name.upper()}_DATABASE", d.database)
            for d in MESH
            if d.database
        },
        postgres_url=POSTGRES_URL,
        rabbitmq_url=RABBITMQ_URL,
        jwt_private_key_file=ensure_dev_key(),
    )


def migrate(wiring: Wiring) -> None:
    asyncio.run(create_missing_databases(list(wiring.databases.values())))
    # Side by side: each database is its own, and a migration is mostly Python starting up.
    running = [
        subprocess.Popen(
            [sys.executable, "-m", f"{deployable.package}.migrate"],
            env={**os.environ, **wiring.env_for(deployable)},
        )
        for deployable in MESH
        if deployable.database is not None
    ]
    try:
        failed = [process for process in running if process.wait() != 0]
    finally:  # interrupted (Ctrl-C): none goes on alone
        for process in running:
            if process.poll() is None:
                process.kill()
    if failed:
        raise subprocess.CalledProcessError(failed[0].returncode, failed[0].args)


@dataclass(frozen=True)
class Child:
    name: str
    command: Sequence[str]
    env: Mapping[str, str]


def children(wiring: Wiring, *, terminal: bool) -> list[Child]:
    """Every deployable under its production command. The caller's environment wins, so
    `make run` variables reach every process; a terminal gets readable, coloured lines."""
    found = []
    for deployable in MESH:
        env = {**wiring.env_for(deployable), **os.environ}
        env["PORT"] = str(wiring.ports[deployable.name])
        env["OTEL_SERVICE_NAME"] = deployable.name
        if terminal and "LOG_FORMAT" not in os.environ:
            env["LOG_FORMAT"] = "console"
            env.setdefault("FORCE_COLOR", "1")  # their stdout is our pipe, not the terminal
        command = production_command(deployable.package)
        command[0] = str(Path(sys.executable).parent / command[0])
        found.append(Child(deployable.name, command, env))
    return found


# Longer than gunicorn's own graceful stop (GRACEFUL_TIMEOUT, 20 s by default).
STOP_TIMEOUT = float(os.environ.get("GRACEFUL_TIMEOUT", "20")) + 10
LINE_LIMIT = 1 << 20  # a JSON line with a long traceback is still one line


def _on_exit(pid: int, callback: Callable[[], None]) -> None:
    """Call `callback` (on the running loop) when process `pid` ends."""
    loop = asyncio.get_running_loop()
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        loop.call_soon(callback)
        return
    except (AttributeError, OSError):  # no pidfd (not Linux): look once a second

        def poll() -> None:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                callback()
                return
            loop.call_later(1.0, poll)

        loop.call_later(1.0, poll)
        return

    def exited() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        callback()

    loop.add_reader(pidfd, exited)


def _on_hangup(callback: Callable[[], None]) -> None:
    """Call `callback` when our terminal goes away (closed window, dropped ssh session), even
    when the hangup signal went to make alone: make then waits for us, expecting that we got
    it too. Watched through an epoll set that reports hangups only, not typed input."""
    terminal = next((fd for fd in (0, 1, 2) if os.isatty(fd)), None)
    if terminal is None or not hasattr(select, "epoll"):
        return
    hangups = select.epoll()
    hangups.register(terminal, 0)  # no events asked for: only EPOLLHUP / EPOLLERR come
    loop = asyncio.get_running_loop()

    def hung_up() -> None:
        loop.remove_reader(hangups.fileno())
        hangups.close()
        callback()

    loop.add_reader(hangups.fileno(), hung_up)


async def _pass_lines(stream: asyncio.StreamReader) -> None:
    """Copy a child's lines to stdout, whole; keep reading when stdout is gone, so the child
    never blocks on a full pipe while it stops."""
    out = sys.stdout.buffer
    while line := await stream.readline():
        with contextlib.suppress(OSError):
            out.write(line)
            out.flush()


async def supervise(mesh: Sequence[Child], *, watch: Sequence[int]) -> int:
    """Run `mesh` until a signal, the end of a watched process or of any child; then stop
    every child gracefully, and SIGKILL what is still running after `STOP_TIMEOUT`."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    outcome: dict[str, int] = {}

    def request_stop(why: str, returncode: int) -> None:
        if stop.is_set():
            if why == "SIGINT":
                say("killing every process")
                kill_all(signal.SIGKILL)
            return
        say(f"{why}: stopping every process (Ctrl-C again kills them)")
        outcome["returncode"] = returncode
        stop.set()

    # `nohup make run` ignores hangups, and so do we then.
    hangups = signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN
    for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGHUP] if hangups else [])):
        loop.add_signal_handler(sig, request_stop, sig.name, 128 + sig)
    if hangups:
        _on_hangup(functools.partial(request_stop, "the terminal closed", 128 + signal.SIGHUP))
    for pid in watch:
        _on_exit(pid, functools.partial(request_stop, f"process {pid} ended", 1))

    processes: dict[str, asyncio.subprocess.Process] = {}

    def kill_all(sig: signal.Signals) -> None:
        """SIGTERM to each gunicorn master, which stops its workers gracefully; SIGKILL to
        each process group, workers included."""
        for process in processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    if sig == signal.SIGKILL:
                        os.killpg(process.pid, sig)
                    else:
                        os.kill(process.pid, sig)

    for child in mesh:
        processes[child.name] = await asyncio.create_subprocess_exec(
            *child.command,
            env=child.env,
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own process group, so a terminal's Ctrl-C reaches us only, and we stop it
            # gracefully; and it dies with us, whatever kills us.
            start_new_session=True,
            preexec_fn=functools.partial(die_with_parent, os.getpid(), signal.SIGTERM),
            limit=LINE_LIMIT,
        )
    pumps = [
        asyncio.create_task(_pass_lines(process.stdout))
        for process in processes.values()
        if process.stdout is not None
    ]

    async def watch_child(name: str, process: asyncio.subprocess.Process) -> None:
        returncode = await process.wait()
        # A child never ends on its own in a healthy mesh: not even with 0.
        request_stop(
            f"{name} exited (rc={returncode})",
            128 - returncode if returncode < 0 else returncode or 1,
        )

    watchers = [asyncio.create_task(watch_child(n, p)) for n, p in processes.items()]
    await stop.wait()
    kill_all(signal.SIGTERM)
    waiting = [asyncio.create_task(process.wait()) for process in processes.values()]
    _, still_running = await asyncio.wait(waiting, timeout=STOP_TIMEOUT)
    if still_running:
        say(f"still running after {STOP_TIMEOUT:.0f} s: killing them")
        kill_all(signal.SIGKILL)
        await asyncio.wait(waiting)
    for watcher in watchers:
        watcher.cancel()
    # Their last lines; an orphan still holding a pipe must not keep us here.
    await asyncio.wait(pumps, timeout=5)
    say("stopped")
    return outcome["returncode"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--migrate-only", action="store_true")
    parser.add_argument(
        "--watch-pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="stop the mesh when this process ends (besides our own parent); repeatable",
    )
    args = parser.parse_args()

    preflight()
    wiring = local_wiring()
    migrate(wiring)
    if args.migrate_only:
        return
    mesh = children(wiring, terminal=sys.stdout.isatty())
    watch = sorted({os.getppid(), *args.watch_pid})
    sys.exit(asyncio.run(supervise(mesh, watch=watch)))


if __name__ == "__main__":
    main()
