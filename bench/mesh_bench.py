"""`make bench`: what the mesh costs per request, side by side with nginx, in one bounded run.

A mesh is started with the production command (one gunicorn worker per process), against
throw-away databases and a throw-away RabbitMQ vhost, with tracing off (`OTEL_SDK_DISABLED=true`).
For the tracing ratio a second mesh runs beside it with every request traced, exporting over
OTLP/HTTP to a discarding nginx sink, plus two more gateways in front of the traced services: one
samples one trace in ten (head sampling, the production setting), one records none (what sampling
cannot take away). Figures that are compared are measured in interleaved windows (A B C C B A,
twice): this machine's speed drifts by tens of percent within minutes, and interleaving makes the
compared figures see the same drift. Every load loop is bounded in time and count; the whole run
takes about five minutes. Results:
bench/results/latest.json and latest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from base import DEFAULT_BASE, base_environment
from loadgen import (
    MachineCpu,
    Nginx,
    busy_cores,
    cpu_seconds,
    cpu_used,
    fixed_rate_get,
    process_tree,
    wrk,
)
from messaging import commit_to_publish, consume, drain, wait_until_quiet
from order_flow import ORDER_BODY, order_to_notification
from report import markdown, ratios_and_targets

from meshdev.api import UsersApi
from meshdev.mesh import MESH
from meshdev.processes import ServiceProcess, free_port
from meshdev.stack import RunningMesh, running_mesh

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
LOCUSTFILE = ROOT / "tests" / "load" / "locustfile.py"


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Bounds of every loop (environment overrides for a quick try, e.g. BENCH_SECONDS=3).
SECONDS = _int_env("BENCH_SECONDS", 8)  # per wrk figure, in windows of SECONDS / ROUNDS
# A B C, C B A, A B C, C B A: with two rounds of 4 s, one slow spell of the machine in a
# window still moved a ratio by 0.2 (tracing sampled ÷ off: 0.65, and 0.82 with four rounds).
ROUNDS = 4
WINDOW_SECONDS = max(1, SECONDS // ROUNDS)
WARM_UP_SECONDS = 1  # before the first window of each figure
CONNECTIONS = 32
ORDER_RATE = 100  # orders/s for the notification latency (the target's rate)
HALF_ORDER_RATE = 50  # and at half of it, where the path is not near saturation
ORDER_RATE_SECONDS = _int_env("BENCH_ORDER_RATE_SECONDS", 10)
FIXED_RATE_SECONDS = 5  # the users service's CPU per GET at ORDER_RATE requests/s
LOCUST_SECONDS = _int_env("BENCH_LOCUST_SECONDS", 10)
LOCUST_USERS = 10
OUTBOX_BACKLOG = _int_env("BENCH_OUTBOX_BACKLOG", 20_000)
MESSAGING_WITHIN_SECONDS = 20  # the drain stops being counted after this
CONSUME_WITHIN_SECONDS = 40  # and the consumer working off the drained events
QUIET_SECONDS = 20  # at most, for the events of the order throughput run to be through
LATENCY_SAMPLES = 200  # commit → publish, one event every 20 ms

BASE_ENV = {
    "WEB_CONCURRENCY": "1",
    "LOG_LEVEL": "WARNING",
    # Fixed pools, no overflow: overflow connections open and close as the load wavers, and each
    # new connection prepares its statements again (2 + 8, the test meshes' pools: 135
    # orders/s; 10 + 10, the defaults: 150; 20 + 0: 210). 2 meshes x 3 services x 12 fit the
    # shared PostgreSQL's 100 connections; 12 against 20 cost a few percent of orders/s at
    # most (docs/benchmarks.md).
    "DATABASE_POOL_SIZE": "12",
    "DATABASE_MAX_OVERFLOW": "0",
    # The gateway keeps auth and rate limiting on, with a limit the load stays under.
    "RATE_LIMIT_ENABLED": "true",
    "RATE_LIMIT": "1000000/minute",
}
TRACING_OFF = {"OTEL_SDK_DISABLED": "true"}


def tracing_on(sink: Nginx) -> dict[str, str]:
    return {
        "OTEL_SDK_DISABLED": "false",
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
    }


# Head sampling as a production deployment might set it: the gateway keeps one trace in ten,
# the services follow the caller's decision. Reported beside the target, not as it.
SAMPLED_RATIO = "0.1"


def tracing_sampled(sink: Nginx) -> dict[str, str]:
    return {
        **tracing_on(sink),
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": SAMPLED_RATIO,
    }


def tracing_unrecorded(sink: Nginx) -> dict[str, str]:
    """What sampling leaves on the nine requests in ten it drops, without the recorded tenth:
    the gateway records no trace, so no span is made anywhere, while every process still
    records its metrics and passes the decision on (`traceparent`)."""
    return {**tracing_on(sink), "OTEL_TRACES_SAMPLER": "always_off"}


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")


def _machine() -> dict[str, Any]:
    def version(command: list[str]) -> str:
        try:
            done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=10)
        except FileNotFoundError:
            return "missing"
        return (done.stdout or done.stderr).strip().splitlines()[0]

    return {
        "cpus": os.cpu_count(),
        "cpu_model": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        ),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": version(["nginx", "-v"]),
        "wrk": version(["wrk", "-v"]),
    }


def _pid(service: ServiceProcess) -> int:
    assert service.process is not None
    return service.process.pid


def _pids(mesh: RunningMesh, *names: str) -> dict[str, int]:
    return {name: _pid(mesh.processes[name]) for name in names}


async def until_quiet(mesh: RunningMesh) -> dict[str, Any]:
    """Waits (bounded) until the events of earlier orders are through `mesh`."""
    return await wait_until_quiet(
        mesh.database_url("orders"), mesh.database_url("notifications"), within=QUIET_SECONDS
    )


@dataclass(frozen=True)
class Target:
    """What one figure loads (`url`, with wrk's `load` options), whose CPU it counts (`pids`),
    and what to wait for after each of its windows (`settle`: the events an order run leaves)."""

    url: str
    pids: Mapping[str, int]
    load: Mapping[str, Any]
    settle: Callable[[], Awaitable[object]] | None = None


async def interleaved(targets: Mapping[str, Target]) -> dict[str, dict[str, Any]]:
    """Figures of `targets` measured in alternating wrk windows, in the order A B C C B A …, so
    that a slow minute of the machine falls on every figure alike; each target's first window
    follows a short warm-up. A figure's req/s and latencies are the medians of its windows,
    its CPU per request is the CPU of its windows over their requests."""
    names = list(targets)
    order = [name for r in range(ROUNDS) for name in (names if r % 2 == 0 else names[::-1])]
    windows: dict[str, list[tuple[dict[str, float], dict[str, float]]]] = {n: [] for n in names}
    for name in order:
        target = targets[name]
        if not windows[name]:
            # Once per target: later windows open new connections too, but the caches of the
            # processes (JWKS, tokens, statements) are warm by then.
            wrk(target.url, seconds=WARM_UP_SECONDS, connections=CONNECTIONS, **target.load)
        before = {process: cpu_seconds(pid) for process, pid in target.pids.items()}
        machine_before = MachineCpu.read()
        result = wrk(target.url, seconds=WINDOW_SECONDS, connections=CONNECTIONS, **target.load)
        if target.settle is not None:
            # Inside the window: working off what its requests left is part of their cost.
            await target.settle()
        cpu = {process: cpu_seconds(pid) - before[process] for process, pid in target.pids.items()}
        shared = cpu_used(machine_before, MachineCpu.read(), {})
        cpu.update({server: shared[server] for server in SHARED_SERVERS})
        windows[name].append((result.as_dict(), cpu))
    return {name: _combined(windows[name]) for name in names}


# Shared by both meshes: their CPU per request is the machine's during the window, which only
# the loaded mesh keeps busy (the idle one's background is a few milliseconds a second).
SHARED_SERVERS = ("postgresql", "rabbitmq")


def _combined(windows: list[tuple[dict[str, float], dict[str, float]]]) -> dict[str, Any]:
    def median(key: str, digits: int = 2) -> float:
        # Not the mean: a slow spell of the machine in one window (seen: 470 req/s between
        # windows of 780 and 640) would move the figure, and every ratio made with it.
        return round(statistics.median(result[key] for result, _ in windows), digits)

    requests = max(sum(result["requests"] for result, _ in windows), 1)
    return {
        "requests_per_second": median("requests_per_second", 1),
        "requests": requests,
        "p50_ms": median("p50_ms"),
        "p99_ms": median("p99_ms"),
        "errors": sum(result["errors"] for result, _ in windows),
        "cpu_ms_per_request": {
            process: round(sum(cpu[process] for _, cpu in windows) * 1000 / requests, 3)
            for process in windows[0][1]
            if process not in SHARED_SERVERS
        },
        "servers_cpu_ms_per_request": {
            server: round(sum(cpu[server] for _, cpu in windows) * 1000 / requests, 3)
            for server in SHARED_SERVERS
        },
        "windows_requests_per_second": [result["requests_per_second"] for result, _ in windows],
    }


async def customer_token(mesh: RunningMesh) -> str:
    async with httpx.AsyncClient(base_url=mesh.url("users")) as client:
        return await UsersApi(client).token("bench@example.com")


USERS_ME = "/api/users/me"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _gateway_get(mesh: RunningMesh, token: str, gateway: ServiceProcess | None = None) -> Target:
    gateway = gateway or mesh.processes["gateway"]
    return Target(
        gateway.url + USERS_ME,
        {**_pids(mesh, "users"), "gateway": _pid(gateway)},
        {"headers": _bearer(token)},
    )


def order_post(mesh: RunningMesh, token: str, gateway: ServiceProcess | None = None) -> Target:
    gateway = gateway or mesh.processes["gateway"]

    async def settle() -> None:
        # The run leaves the relay and the consumer a backlog of its orders' events; left
        # alone, it would be worked off during the next window, on another figure's CPU.
        await until_quiet(mesh)

    return Target(
        gateway.url + "/api/orders",
        {"gateway": _pid(gateway), **_pids(mesh, "orders", "users", "notifications")},
        {
            "method": "POST",
            "body": json.dumps(ORDER_BODY),
            "headers": {**_bearer(token), "Content-Type": "application/json"},
        },
        settle,
    )


async def gateway_overhead(mesh: RunningMesh, token: str) -> dict[str, Any]:
    """Scenario 1: the same authenticated GET direct, through nginx, through the gateway."""
    users = mesh.processes["users"]
    nginx = Nginx(listen_port=free_port(), upstream=f"127.0.0.1:{users.port}").start()
    load = {"headers": _bearer(token)}
    try:
        log("scenario 1: direct, nginx, gateway (interleaved)")
        return await interleaved(
            {
                "direct": Target(users.url + USERS_ME, _pids(mesh, "users"), load),
                "nginx": Target(
                    nginx.url + USERS_ME, {**_pids(mesh, "users"), "nginx": nginx.pid}, load
                ),
                "gateway": _gateway_get(mesh, token),
            }
        )
    finally:
        nginx.stop()


# What the users service answers for /api/users/me, from memory.
MEMORY_BODY = json.dumps(
    {
        "id": "3f1c1d2e-1111-2222-3333-444455556666",
        "email": "bench@example.com",
        "name": "Bench",
        "created_at": "2026-12-02T10:00:00+00:00",
    }
)


@contextlib.asynccontextmanager
async def serving(process: ServiceProcess) -> AsyncIterator[ServiceProcess]:
    """`process` started and ready for the block, stopped after it."""
    process.start()
    try:
        await asyncio.to_thread(process.wait_ready)
        yield process
    finally:
        await asyncio.to_thread(process.stop)


def bare_hop(
    upstream: str, directory: Path
) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
    """`bare_hop.main` (a Python proxy hop with nothing but the gateway's server stack and
    HTTP client) in front of `upstream`, served like every deployable."""
    return serving(
        ServiceProcess(
            "bare_hop",
            env={**BASE_ENV, "BARE_HOP_UPSTREAM": upstream, "PYTHONPATH": str(BENCH)},
            log_path=directory / "bare-hop.log",
        )
    )


async def proxy_cost(mesh: RunningMesh, token: str) -> dict[str, Any]:
    """Scenario 1b: the same GET through the gateway (auth and rate limiting on), through a
    bare Python hop and through nginx to a backend that answers from memory, so the backend
    is never the bottleneck and each proxy's CPU per request is its own (interleaved)."""
    backend = Nginx(listen_port=free_port(), body=MEMORY_BODY).start()
    nginx = Nginx(listen_port=free_port(), upstream=f"127.0.0.1:{backend.port}").start()
    load = {"headers": _bearer(token)}
    try:
        gateway_log = mesh.processes["gateway"].log_path
        async with (
            second_gateway(
                mesh, {"USERS_URL": backend.url}, name="gateway-memory-backend"
            ) as gateway,
            bare_hop(backend.url, gateway_log.parent) as hop,
        ):
            log(
                "scenario 1b: gateway, a bare Python hop and nginx in front of a backend "
                "answering from memory"
            )
            return await interleaved(
                {
                    "nginx": Target(
                        nginx.url + USERS_ME, {"nginx": nginx.pid, "backend": backend.pid}, load
                    ),
                    "bare Python hop": Target(
                        hop.url + USERS_ME, {"bare_hop": _pid(hop), "backend": backend.pid}, load
                    ),
                    "gateway": Target(
                        gateway.url + USERS_ME,
                        {"gateway": _pid(gateway), "backend": backend.pid},
                        load,
                    ),
                }
            )
    finally:
        nginx.stop()
        backend.stop()


async def tracing_overhead(
    off: RunningMesh,
    traced: RunningMesh,
    gateways: Mapping[str, ServiceProcess],
    tokens: dict[str, str],
) -> dict[str, Any]:
    """Scenarios 3 and 2a: GET /api/users/me and POST /api/orders (users check, DB write,
    outbox) through a gateway, with tracing off, on, and through each of `gateways` (head
    sampling; nothing recorded) in front of the traced services; each users service signs
    its own tokens."""
    configurations: dict[str, tuple[RunningMesh, str, ServiceProcess | None]] = {
        "off": (off, tokens["off"], None),
        "on": (traced, tokens["traced"], None),
        **{name: (traced, tokens["traced"], gateway) for name, gateway in gateways.items()},
    }
    rows = " / ".join(configurations)
    log(f"scenario 3: GET through the gateway, tracing {rows} (interleaved)")
    gets = await interleaved({k: _gateway_get(*c) for k, c in configurations.items()})
    log(f"scenarios 2 and 3: POST /api/orders, tracing {rows} (interleaved)")
    posts = await interleaved({k: order_post(*c) for k, c in configurations.items()})
    return {"gateway": gets, "orders": posts}


def locust_smoke(mesh: RunningMesh, directory: Path) -> dict[str, Any]:
    """A short headless run of tests/load/locustfile.py: does realistic traffic pass?"""
    log("locust smoke")
    prefix = directory / "locust"
    command = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", mesh.url("gateway"), "--users", str(LOCUST_USERS), "--spawn-rate", "5",
        "--run-time", f"{LOCUST_SECONDS}s", "--stop-timeout", "2", "--only-summary",
        "--loglevel", "WARNING", "--csv", str(prefix),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=LOCUST_SECONDS + 40
    )
    stats = Path(f"{prefix}_stats.csv")
    if not stats.exists():
        return {"exit_code": done.returncode, "error": done.stderr[-2000:]}
    with stats.open() as file:
        total = next(row for row in csv.DictReader(file) if row["Name"] == "Aggregated")
    return {
        "seconds": LOCUST_SECONDS,
        "users": LOCUST_USERS,
        "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]),
        "requests_per_second": round(float(total["Requests/s"]), 1),
        "p50_ms": float(total["50%"]),
        "p99_ms": float(total["99%"]),
        "exit_code": done.returncode,
    }


@contextlib.contextmanager
def nginx_sink() -> Iterator[Nginx]:
    sink = Nginx(listen_port=free_port()).start()
    try:
        yield sink
    finally:
        sink.stop()


def second_gateway(
    mesh: RunningMesh, env: Mapping[str, str], *, name: str
) -> contextlib.AbstractAsyncContextManager[ServiceProcess]:
    """Another gateway in front of `mesh`'s services, on its own port, with `env` added."""
    gateway = mesh.processes["gateway"]
    return serving(
        ServiceProcess(
            gateway.package,
            env={**{k: v for k, v in gateway.env.items() if k != "PORT"}, **env},
            log_path=gateway.log_path.with_name(f"{name}.log"),
        )
    )


async def messaging_figures(mesh: RunningMesh, token: str) -> dict[str, Any]:
    log("scenario 4: commit → publish")
    figures: dict[str, Any] = {
        "commit_to_publish": await commit_to_publish(
            mesh.url("orders"),
            token,
            mesh.wiring.rabbitmq_url,
            samples=LATENCY_SAMPLES,
            interval=0.02,
        )
    }
    notifications = mesh.processes["notifications"]
    log(f"scenario 4: outbox drain of {OUTBOX_BACKLOG} events, the consumer stopped")
    await asyncio.to_thread(notifications.stop)  # its durable queue keeps what is published
    figures["outbox_drain"] = await drain(
        mesh.database_url("orders"), backlog=OUTBOX_BACKLOG, within=MESSAGING_WITHIN_SECONDS
    )

    async def start_consumer() -> None:
        notifications.start()
        await asyncio.to_thread(notifications.wait_ready)

    log(f"scenario 4: the consumer working off {OUTBOX_BACKLOG} events")
    figures["consumer"] = await consume(
        mesh.database_url("notifications"),
        expected=figures["outbox_drain"]["events_published"],
        within=CONSUME_WITHIN_SECONDS,
        start_consumer=start_consumer,
    )
    return figures


async def cpu_at_fixed_rate(mesh: RunningMesh, token: str) -> dict[str, Any]:
    """The users service's CPU per `GET /api/users/me` at a fixed ORDER_RATE requests/s, to set
    beside its CPU per request at 32 connections (section 1, direct): what one request costs
    when the process waits between requests, as every process of the order path does at a
    fixed rate below saturation."""
    log(f"scenario 2: {ORDER_RATE} GET/s direct on users, CPU per request")
    pid = _pid(mesh.processes["users"])
    before = cpu_seconds(pid)
    result = await fixed_rate_get(
        mesh.url("users") + USERS_ME, _bearer(token), rate=ORDER_RATE, seconds=FIXED_RATE_SECONDS
    )
    used = cpu_seconds(pid) - before
    return {
        **result,
        "seconds": FIXED_RATE_SECONDS,
        "cpu_ms_per_request": {"users": round(used * 1000 / max(result["requests"], 1), 3)},
    }


async def order_latency(
    mesh: RunningMesh, token: str, rate: int, seconds: int = ORDER_RATE_SECONDS
) -> dict[str, Any]:
    """Scenario 2b: order → notification at a fixed rate, once earlier events are through, and
    what every process of the machine spent meanwhile (warm-up and stragglers included)."""
    settled = await until_quiet(mesh)
    log(f"scenario 2: {rate} orders/s for {seconds} s, SSE latency")
    trees = {name: process_tree(_pid(process)) for name, process in mesh.processes.items()}
    before = MachineCpu.read()
    flow = await order_to_notification(mesh.url("gateway"), token, rate=rate, seconds=seconds)
    after = MachineCpu.read()
    # A latency figure at a fixed rate means something else near saturation.
    used = cpu_used(before, after, trees)
    sent = int(rate * flow["warm_up_seconds"]) + flow["orders"]
    return {
        **flow,
        "before": settled,
        "busy_cores": busy_cores(before, after, trees),
        "orders_sent": sent,
        "cpu_ms_per_request": {name: round(used[name] * 1000 / sent, 3) for name in trees},
        "servers_cpu_ms_per_request": {
            server: round(used[server] * 1000 / sent, 3) for server in SHARED_SERVERS
        },
    }


# The cost per order against an earlier commit (target: half of it), side by side.
MESH_PROCESSES = tuple(d.name for d in MESH)
FIXED_RATE = HALF_ORDER_RATE  # orders/s
FIXED_RATE_SECONDS = _int_env("BENCH_COMPARE_RATE_SECONDS", 5)


@contextlib.asynccontextmanager
async def base_mesh(
    workdir: Path, bin_dir: Path, *, env: Mapping[str, str] | None = None
) -> AsyncIterator[RunningMesh]:
    """The base commit's mesh, untraced unless `env` says otherwise."""
    async with running_mesh(
        workdir / "base",
        names=MESH_PROCESSES,
        env=env or {**BASE_ENV, **TRACING_OFF},
        bin_dir=bin_dir,
    ) as mesh:
        yield mesh


async def cost_per_order(
    meshes: Mapping[str, RunningMesh], tokens: Mapping[str, str]
) -> dict[str, Any]:
    """Each mesh's CPU per order at 32 connections and at FIXED_RATE, interleaved."""
    log("cost per order: POST /api/orders at 32 connections, base and new interleaved")
    saturated = await interleaved(
        {name: order_post(mesh, tokens[name]) for name, mesh in meshes.items()}
    )
    log(f"cost per order: {FIXED_RATE} orders/s, base and new interleaved")
    names = list(meshes)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for name in [*names, *names[::-1]]:
        runs[name].append(
            await order_latency(meshes[name], tokens[name], FIXED_RATE, FIXED_RATE_SECONDS)
        )
    return {
        "connections": {name: _mesh_sum(row) for name, row in saturated.items()},
        "fixed_rate": {name: _mesh_sum(_merged(rows)) for name, rows in runs.items()},
        "fixed_rate_orders_per_second": FIXED_RATE,
    }


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Runs of one mesh at the fixed rate as one figure: CPU over all their orders."""
    orders = sum(run["orders_sent"] for run in runs)
    cpu = {
        key: {
            process: round(sum(run[key][process] * run["orders_sent"] for run in runs) / orders, 3)
            for process in runs[0][key]
        }
        for key in ("cpu_ms_per_request", "servers_cpu_ms_per_request")
    }
    return {
        **cpu,
        "orders": orders,
        "p99_ms": [run["p99_ms"] for run in runs],
        "orders_failed": sum(run["orders_failed"] for run in runs),
    }


def _mesh_sum(row: dict[str, Any]) -> dict[str, Any]:
    cpu = row["cpu_ms_per_request"]
    return {**row, "mesh_cpu_ms_per_order": round(sum(cpu[p] for p in MESH_PROCESSES), 3)}


@contextlib.asynccontextmanager
async def side_by_side(
    workdir: Path, sink: Nginx
) -> AsyncIterator[tuple[RunningMesh, RunningMesh]]:
    """The untraced mesh and the traced one, started at the same time (half the waiting)."""
    async with contextlib.AsyncExitStack() as stack:
        meshes = (
            running_mesh(workdir, names=MESH_PROCESSES, env={**BASE_ENV, **TRACING_OFF}),
            running_mesh(
                workdir / "traced", names=MESH_PROCESSES, env={**BASE_ENV, **tracing_on(sink)}
            ),
        )
        starting = [asyncio.ensure_future(stack.enter_async_context(mesh)) for mesh in meshes]
        try:
            off, traced = await asyncio.gather(*starting)
        except BaseException:
            # A mesh that failed to start has cleaned up after itself; stop the other one's
            # start, and what it had already started goes when the stack unwinds.
            for task in starting:
                task.cancel()
            await asyncio.gather(*starting, return_exceptions=True)
            raise
        yield off, traced


async def stop_processes(mesh: RunningMesh) -> None:
    """Stops a mesh's processes early (its databases and vhost go when its context ends)."""
    await asyncio.gather(*(asyncio.to_thread(p.stop) for p in mesh.processes.values()))


async def run_all(workdir: Path, base_commit: str, base_bin: Path) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    log("starting two meshes: tracing off, and tracing on")
    # The sink outlives the meshes, so the last spans leave at once on shutdown.
    with nginx_sink() as sink:
        async with side_by_side(workdir, sink) as (mesh, traced):
            tokens = {"off": await customer_token(mesh), "traced": await customer_token(traced)}
            token = tokens["off"]
            # The traced mesh idles meanwhile (its export threads wake every few seconds).
            figures["gateway_overhead"] = await gateway_overhead(mesh, token)
            figures["proxy_cost"] = await proxy_cost(mesh, token)
            log(
                "starting two gateways in front of the traced services: one sampling 1 trace "
                "in 10, one recording none"
            )
            async with (
                second_gateway(traced, tracing_sampled(sink), name="gateway-sampled") as sampled,
                second_gateway(
                    traced, tracing_unrecorded(sink), name="gateway-unrecorded"
                ) as unrecorded,
            ):
                figures["tracing"] = await tracing_overhead(
                    mesh, traced, {"sampled": sampled, "unrecorded": unrecorded}, tokens
                )
            log("stopping the traced mesh: what follows has the machine to itself")
            await stop_processes(traced)
            log(f"starting the mesh of {base_commit[:12]} beside this one")
            async with base_mesh(workdir, base_bin) as base:
                meshes = {"base": base, "new": mesh}
                base_tokens = {"base": await customer_token(base), "new": token}
                figures["cost_per_order"] = {
                    **await cost_per_order(meshes, base_tokens),
                    "base_commit": base_commit,
                }
            figures["users_at_fixed_rate"] = await cpu_at_fixed_rate(mesh, token)
            figures["order_to_notification"] = await order_latency(mesh, token, ORDER_RATE)
            figures["order_to_notification_half_rate"] = await order_latency(
                mesh, token, HALF_ORDER_RATE
            )
            figures["locust_smoke"] = locust_smoke(mesh, workdir)
            figures.update(await messaging_figures(mesh, token))
    return figures


def main() -> None:
    started = time.monotonic()
    machine = _machine()
    base_commit, base_bin = base_environment(os.environ.get("BENCH_BASE", DEFAULT_BASE))
    # BENCH_LOG_DIR keeps the processes' logs (for looking into errors); a temporary one otherwise.
    keep = os.environ.get("BENCH_LOG_DIR")
    with contextlib.ExitStack() as stack:
        if keep:
            workdir = Path(keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        figures = asyncio.run(run_all(workdir, base_commit, base_bin))
    ratios, targets = ratios_and_targets(figures)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "setup": {
            "deployables": list(MESH_PROCESSES),
            "workers_per_process": 1,
            "connections": CONNECTIONS,
            "seconds_per_wrk_figure": WINDOW_SECONDS * ROUNDS,
            "windows_per_figure": ROUNDS,
            "warm_up_seconds_per_figure": WARM_UP_SECONDS,
            "order_rate_per_second": ORDER_RATE,
            "order_rate_seconds": ORDER_RATE_SECONDS,
            "outbox_backlog": OUTBOX_BACKLOG,
            "commit_to_publish_samples": LATENCY_SAMPLES,
            "locust_seconds": LOCUST_SECONDS,
            "tracing_sink": "nginx answering 204 to every OTLP/HTTP export",
            "tracing_on_sampler": "parentbased_always_on (every request)",
            "tracing_sampled_sampler": f"parentbased_traceidratio {SAMPLED_RATIO}",
            "tracing_sampled_setup": "a second gateway with this sampler in front of the traced "
            "services, which follow its decision",
            "tracing_unrecorded_sampler": "always_off at the gateway (no span recorded anywhere)",
            "tracing_unrecorded_setup": "a third gateway, recording no trace, in front of the "
            "same services: the path of the requests sampling drops, without the recorded tenth",
            "memory_backend": "nginx answering every request with the body of /api/users/me",
            "base_commit": base_commit,
        },
        "figures": figures,
        "ratios": ratios,
        "targets": targets,
        "duration_seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(report))
    sys.stdout.write(markdown(report))


if __name__ == "__main__":
    main()
