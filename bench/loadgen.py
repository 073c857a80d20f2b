"""The one place for the benchmarks' tools: wrk (run and parsed), an open-loop loader at a fixed
rate, /proc CPU accounting of a process tree and of the whole machine, percentiles, and nginx
(the reverse-proxy baseline, or a discarding OTLP sink)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    requests: int
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx answers and socket errors

    def as_dict(self) -> dict[str, float]:
        return {
            "requests_per_second": round(self.requests_per_second, 1),
            "requests": self.requests,
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "errors": self.errors,
        }


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise ValueError(f"wrk output has no {pattern!r}:\n{text}")
    return match.group(1)


def wrk(
    url: str,
    *,
    connections: int = 32,
    seconds: int = 10,
    threads: int = 2,
    headers: dict[str, str] | None = None,
    method: str = "GET",
    body: str | None = None,
) -> LoadResult:
    """Runs wrk (bounded by `seconds`) and parses its throughput and latency distribution.
    Every answer that is not 2xx/3xx counts as an error."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    script = None
    if method != "GET" or body is not None:
        script = f"wrk.method = {_lua_string(method)}\nwrk.body = {_lua_string(body or '')}\n"
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as lua:
        if script:
            lua.write(script)
            lua.flush()
            command += ["-s", lua.name]
        command.append(url)
        output = subprocess.run(
            command, capture_output=True, text=True, check=True, timeout=seconds + 30
        ).stdout
    percentiles = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", output, re.MULTILINE))
    if "99" not in percentiles:
        raise ValueError(f"wrk measured no latency distribution:\n{output}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", output))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return LoadResult(
        requests_per_second=float(_find(r"Requests/sec:\s+([\d.]+)", output)),
        requests=int(_find(r"(\d+) requests in", output)),
        p50_ms=_duration_ms(percentiles["50"]),
        p99_ms=_duration_ms(percentiles["99"]),
        errors=errors,
    )


async def paced(rate: float, count: int) -> AsyncIterator[int]:
    """0 … count-1, each at its time on a fixed schedule of `rate` per second. Open loop: the
    schedule does not wait for earlier requests, so a slow server cannot slow the offered rate."""
    begin = time.perf_counter()
    for index in range(count):
        delay = begin + index / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield index


async def fixed_rate_get(
    url: str, headers: Mapping[str, str], *, rate: float, seconds: float
) -> dict[str, float]:
    """GETs `url` `rate` times a second for `seconds` (what wrk, a closed-loop loader, cannot)."""
    latencies: list[float] = []
    errors = 0

    async def get(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        started = time.perf_counter()
        try:
            async with session.get(url) as response:
                await response.read()
                if response.status >= 400:
                    errors += 1
                    return
        except (aiohttp.ClientError, TimeoutError):
            errors += 1
            return
        latencies.append((time.perf_counter() - started) * 1000)

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(headers=dict(headers), timeout=timeout) as session:
        requests = [
            asyncio.create_task(get(session)) async for _ in paced(rate, int(rate * seconds))
        ]
        await asyncio.gather(*requests)
    return {
        "requests_per_second": rate,
        "requests": len(requests),
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "errors": errors,
    }


def _lua_string(text: str) -> str:
    return "[==[" + text + "]==]"


def percentile(samples: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (`fraction` in 0..1) of unsorted samples; NaN when empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(child) for child in text]
    return children


def process_tree(pid: int) -> list[int]:
    """A process and all its descendants (a gunicorn master and its workers)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        try:
            pending += _children(current)
        except FileNotFoundError:
            continue
    return tree


@dataclass(frozen=True)
class ProcessCpu:
    name: str  # the command name (a kernel worker's changes with the work it does)
    started: int  # clock ticks after boot: tells a reused pid apart
    ticks: int  # user + system CPU so far, in clock ticks


def _stat(pid: int | str) -> ProcessCpu:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text.rpartition(")")[2].split()
    return ProcessCpu(
        name=text[text.index("(") + 1 : text.rindex(")")],
        started=int(fields[19]),  # starttime (field 22)
        ticks=int(fields[11]) + int(fields[12]),  # utime, stime (fields 14 and 15)
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            total += _stat(member).ticks
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / CLOCK_TICKS


@dataclass(frozen=True)
class MachineCpu:
    """The CPU of every process on the machine at one moment, and when it was read."""

    processes: Mapping[int, ProcessCpu]  # by pid
    at: float

    @classmethod
    def read(cls) -> MachineCpu:
        processes: dict[int, ProcessCpu] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    processes[int(entry.name)] = _stat(entry.name)
                except (FileNotFoundError, ProcessLookupError):
                    continue  # ended between the listing and the read
        return cls(processes, time.monotonic())


# Command names of the shared servers' processes, by what they are.
SERVERS = {"postgres": "postgresql", "beam.smp": "rabbitmq", "erl_child_setup": "rabbitmq"}


def cpu_used(
    before: MachineCpu, after: MachineCpu, groups: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """CPU seconds used between two readings, by group: the named process trees of `groups`,
    the shared servers, this process ("bench loader") and the rest ("other"). A process that
    ended in between is not counted (the servers' short-lived backends are few in these runs)."""
    owner = {pid: name for name, pids in groups.items() for pid in pids}
    owner[os.getpid()] = "bench loader"
    used = dict.fromkeys([*groups, *SERVERS.values(), "bench loader", "other"], 0)
    for pid, process in after.processes.items():
        earlier = before.processes.get(pid)
        if earlier is not None and earlier.started == process.started:
            spent = process.ticks - earlier.ticks
        else:
            spent = process.ticks  # started in between (a new process, or a reused pid)
        used[owner.get(pid) or SERVERS.get(process.name, "other")] += spent
    return {group: ticks / CLOCK_TICKS for group, ticks in used.items()}


def busy_cores(
    before: MachineCpu, after: MachineCpu, groups: Mapping[str, Sequence[int]]
) -> dict[str, float]:
    """`cpu_used` in cores (CPU seconds per second), with the machine's total under "total"."""
    used = cpu_used(before, after, groups)
    seconds = max(after.at - before.at, 1e-9)
    cores = {group: round(cpu / seconds, 2) for group, cpu in used.items()}
    cores["total"] = round(sum(used.values()) / seconds, 2)
    return cores


class Nginx:
    """nginx with one worker: a plain keep-alive reverse proxy in front of `upstream` (the
    baseline the gateway is compared with); or, without an upstream, a backend that answers
    every request with `body` from memory (what a proxy costs when its backend is never the
    bottleneck), or with 204 and keeps nothing (an OTLP/HTTP sink: tracing's cost without a
    collector's)."""

    def __init__(
        self, *, listen_port: int, upstream: str | None = None, body: str | None = None
    ) -> None:
        self.port = listen_port
        self.upstream = upstream
        self.body = body
        self.directory = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _locations(self) -> str:
        if self.upstream is None and self.body is not None:
            return f"location / {{ default_type application/json; return 200 '{self.body}'; }}"
        if self.upstream is None:
            return "location / { return 204; }"
        return textwrap.dedent(
            """\
            location / {
                proxy_pass http://backend;
                proxy_http_version 1.1;
                proxy_set_header Connection "";
                proxy_set_header Host $host;
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            }"""
        )

    def config(self) -> str:
        upstream = (
            f"upstream backend {{ server {self.upstream}; keepalive 64; }}" if self.upstream else ""
        )
        return textwrap.dedent(
            f"""\
            daemon off;
            worker_processes 1;
            pid {self.directory}/nginx.pid;
            error_log {self.directory}/error.log warn;
            events {{ worker_connections 1024; }}
            http {{
                access_log off;
                keepalive_requests 1000000;
                client_max_body_size 64m;
                client_body_temp_path {self.directory}/body;
                proxy_temp_path {self.directory}/proxy;
                fastcgi_temp_path {self.directory}/fastcgi;
                uwsgi_temp_path {self.directory}/uwsgi;
                scgi_temp_path {self.directory}/scgi;
                {upstream}
                server {{
                    listen 127.0.0.1:{self.port};
            {textwrap.indent(self._locations(), " " * 8)}
                }}
            }}
            """
        )

    def start(self) -> Nginx:
        config = self.directory / "nginx.conf"
        config.write_text(self.config())
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.process = subprocess.Popen(
            [nginx, "-c", str(config), "-p", str(self.directory)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_listening(self.port, self.process)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _wait_listening(port: int, process: subprocess.Popen[bytes], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            time.sleep(0.05)
        else:
            return
    raise TimeoutError(f"nginx is not listening on {port} after {within}s")
