"""`make bench`: what the mesh costs per request, side by side with nginx, in one bounded run.

One mesh is started with the production command (one gunicorn worker per process), against
throw-away databases and a throw-away RabbitMQ vhost, with tracing off
(`OTEL_SDK_DISABLED=true`) for every scenario; then restarted in place with every request
traced, exporting over OTLP/HTTP to a discarding nginx sink, for the throughput runs that the
tracing ratio compares; and once more with one trace in ten sampled at the gateway, to show what
head sampling saves. Absolute figures drift on a shared 2-core machine; the ratios between
figures of the same run are what the README quotes. Every load loop is bounded in time and
count; the whole run takes about three minutes. Results: bench/results/latest.json and
latest.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from loadgen import Nginx, cpu_seconds, wrk
from messaging import commit_to_publish, drain_and_consume, purge_queue, wait_until_quiet
from order_flow import ORDER_BODY, order_to_notification
from report import markdown, ratios_and_targets

from meshdev.api import UsersApi
from meshdev.mesh import MESH
from meshdev.processes import free_port
from meshdev.stack import RunningMesh, running_mesh

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).parent / "results"
LOCUSTFILE = ROOT / "tests" / "load" / "locustfile.py"


def _int_env(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Bounds of every loop (environment overrides for a quick try, e.g. BENCH_SECONDS=3).
SECONDS = _int_env("BENCH_SECONDS", 8)  # per wrk figure, after a 2 s warm-up
WARM_UP_SECONDS = 2
CONNECTIONS = 32
ORDER_RATE = 100  # orders/s for the notification latency (the target's rate)
HALF_ORDER_RATE = 50  # and at half of it, where the path is not near saturation
ORDER_RATE_SECONDS = _int_env("BENCH_ORDER_RATE_SECONDS", 10)
LOCUST_SECONDS = _int_env("BENCH_LOCUST_SECONDS", 10)
LOCUST_USERS = 10
OUTBOX_BACKLOG = _int_env("BENCH_OUTBOX_BACKLOG", 20_000)
MESSAGING_WITHIN_SECONDS = 20  # the drain and the consumer stop being counted after this
QUIET_SECONDS = 20  # at most, for the events of the order throughput run to be through
LATENCY_SAMPLES = 200  # commit → publish, one event every 20 ms

BASE_ENV = {
    "WEB_CONCURRENCY": "1",
    "LOG_LEVEL": "WARNING",
    # Pools sized for the load (32 connections): a pool smaller than the concurrency opens and
    # closes overflow connections as the load wavers, and each new connection pays for TLS
    # negotiation and prepares its statements again (2 + 8, the test meshes' pools: 135
    # orders/s; 10 + 10, the defaults: 150; 20 + 0: 210). 3 x 20 fit the shared PostgreSQL.
    "DATABASE_POOL_SIZE": "20",
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


def _log(message: str) -> None:
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


def _pids(mesh: RunningMesh, *names: str) -> dict[str, int]:
    pids = {}
    for name in names:
        process = mesh.processes[name].process
        assert process is not None
        pids[name] = process.pid
    return pids


def measured(url: str, pids: Mapping[str, int], **load: Any) -> dict[str, Any]:
    """A wrk run after a warm-up, with the CPU milliseconds per request of each process tree."""
    wrk(url, seconds=WARM_UP_SECONDS, connections=CONNECTIONS, **load)
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    result = wrk(url, seconds=SECONDS, connections=CONNECTIONS, **load)
    requests = max(result.requests, 1)
    return {
        **result.as_dict(),
        "cpu_ms_per_request": {
            name: round((cpu_seconds(pid) - before[name]) * 1000 / requests, 3)
            for name, pid in pids.items()
        },
    }


async def customer_token(mesh: RunningMesh) -> str:
    async with httpx.AsyncClient(base_url=mesh.url("users")) as client:
        return await UsersApi(client).token("bench@example.com")


async def gateway_overhead(mesh: RunningMesh, token: str, *, with_nginx: bool) -> dict[str, Any]:
    """Scenario 1: the same authenticated GET direct, through the gateway, through nginx."""
    headers = {"Authorization": f"Bearer {token}"}
    path = "/api/users/me"
    users = mesh.processes["users"]
    figures: dict[str, Any] = {}
    if with_nginx:
        _log("scenario 1: direct")
        figures["direct"] = measured(users.url + path, _pids(mesh, "users"), headers=headers)
        nginx = Nginx(listen_port=free_port(), upstream=f"127.0.0.1:{users.port}").start()
        try:
            _log("scenario 1: nginx")
            figures["nginx"] = measured(
                nginx.url + path, {**_pids(mesh, "users"), "nginx": nginx.pid}, headers=headers
            )
        finally:
            nginx.stop()
    _log("scenario 1: gateway")
    figures["gateway"] = measured(
        mesh.url("gateway") + path, _pids(mesh, "users", "gateway"), headers=headers
    )
    return figures


def order_throughput(mesh: RunningMesh, token: str) -> dict[str, Any]:
    """Scenario 2a: POST /api/orders through the gateway (users check, DB write, outbox)."""
    _log("scenario 2: order throughput")
    return measured(
        mesh.url("gateway") + "/api/orders",
        _pids(mesh, "gateway", "orders", "users", "notifications"),
        method="POST",
        body=json.dumps(ORDER_BODY),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )


def locust_smoke(mesh: RunningMesh, directory: Path) -> dict[str, Any]:
    """A short headless run of tests/load/locustfile.py: does realistic traffic pass?"""
    _log("locust smoke")
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
def _nginx_sink() -> Iterator[Nginx]:
    sink = Nginx(listen_port=free_port()).start()
    try:
        yield sink
    finally:
        sink.stop()


async def restart_with(mesh: RunningMesh, env: Mapping[str, str]) -> None:
    """Restarts every process with `env` added (same databases, vhost and ports): cheaper than a
    second mesh. The gateway stops first and starts last, once its upstreams are ready."""
    order = [d.name for d in MESH if d.name != "gateway"]
    gateway = mesh.processes["gateway"]
    await asyncio.to_thread(gateway.stop)
    await asyncio.gather(*(asyncio.to_thread(mesh.processes[n].stop) for n in order))
    for process in mesh.processes.values():
        process.env.update(env)
    for name in order:
        mesh.processes[name].start()
    await asyncio.gather(*(asyncio.to_thread(mesh.processes[n].wait_ready) for n in order))
    gateway.start()
    await asyncio.to_thread(gateway.wait_ready)


async def tracing_off_figures(mesh: RunningMesh, workdir: Path, token: str) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "gateway_overhead": await gateway_overhead(mesh, token, with_nginx=True),
        "order_throughput": order_throughput(mesh, token),
    }
    # The throughput run leaves the relays and the consumer a backlog of its orders' events;
    # the paced orders' notifications would queue behind it and measure that backlog.
    _log("waiting for the throughput run's events to be through")
    settled = await wait_until_quiet(
        mesh.database_url("orders"), mesh.database_url("notifications"), within=QUIET_SECONDS
    )
    _log(f"scenario 2: {ORDER_RATE} orders/s for {ORDER_RATE_SECONDS} s, SSE latency")
    figures["order_to_notification"] = await order_to_notification(
        mesh.url("gateway"), token, rate=ORDER_RATE, seconds=ORDER_RATE_SECONDS
    )
    figures["order_to_notification"]["before"] = settled
    settled = await wait_until_quiet(
        mesh.database_url("orders"), mesh.database_url("notifications"), within=QUIET_SECONDS
    )
    _log(f"scenario 2: {HALF_ORDER_RATE} orders/s for {ORDER_RATE_SECONDS} s, SSE latency")
    figures["order_to_notification_half_rate"] = await order_to_notification(
        mesh.url("gateway"), token, rate=HALF_ORDER_RATE, seconds=ORDER_RATE_SECONDS
    )
    figures["order_to_notification_half_rate"]["before"] = settled
    figures["locust_smoke"] = locust_smoke(mesh, workdir)
    _log("scenario 4: commit → publish")
    figures["commit_to_publish"] = await commit_to_publish(
        mesh.database_url("orders"),
        mesh.wiring.rabbitmq_url,
        samples=LATENCY_SAMPLES,
        interval=0.02,
    )
    _log(f"scenario 4: outbox drain of {OUTBOX_BACKLOG} events, consumer")
    figures["outbox_drain"] = await drain_and_consume(
        mesh.database_url("orders"),
        mesh.database_url("notifications"),
        backlog=OUTBOX_BACKLOG,
        within=MESSAGING_WITHIN_SECONDS,
    )
    figures["outbox_drain"]["left_in_queue_and_purged"] = await purge_queue(
        mesh.wiring.rabbitmq_url, "notifications"
    )
    return figures


async def tracing_on_figures(mesh: RunningMesh, token: str, label: str) -> dict[str, Any]:
    _log(f"scenario 3: {label}")
    overhead = await gateway_overhead(mesh, token, with_nginx=False)
    return {"gateway_overhead": overhead, "order_throughput": order_throughput(mesh, token)}


async def run_all(workdir: Path) -> dict[str, Any]:
    names = [d.name for d in MESH]
    _log("starting the mesh")
    # The sink outlives the mesh, so the last spans leave at once on shutdown instead of retrying.
    with _nginx_sink() as sink:
        async with running_mesh(workdir, names=names, env={**BASE_ENV, **TRACING_OFF}) as mesh:
            token = await customer_token(mesh)
            figures = await tracing_off_figures(mesh, workdir, token)
            _log("restarting the mesh with tracing on")
            await restart_with(mesh, tracing_on(sink))
            figures["tracing_on"] = await tracing_on_figures(mesh, token, "tracing on")
            _log(f"restarting the mesh with tracing on, head sampling {SAMPLED_RATIO}")
            await restart_with(mesh, tracing_sampled(sink))
            figures["tracing_sampled"] = await tracing_on_figures(
                mesh, token, f"tracing on, head sampling {SAMPLED_RATIO}"
            )
    return figures


def main() -> None:
    started = time.monotonic()
    machine = _machine()
    # BENCH_LOG_DIR keeps the processes' logs (for looking into errors); a temporary one otherwise.
    keep = os.environ.get("BENCH_LOG_DIR")
    with contextlib.ExitStack() as stack:
        if keep:
            workdir = Path(keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        figures = asyncio.run(run_all(workdir))
    ratios, targets = ratios_and_targets(figures)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "setup": {
            "deployables": [d.name for d in MESH],
            "workers_per_process": 1,
            "connections": CONNECTIONS,
            "seconds_per_wrk_figure": SECONDS,
            "warm_up_seconds": WARM_UP_SECONDS,
            "order_rate_per_second": ORDER_RATE,
            "order_rate_seconds": ORDER_RATE_SECONDS,
            "outbox_backlog": OUTBOX_BACKLOG,
            "commit_to_publish_samples": LATENCY_SAMPLES,
            "locust_seconds": LOCUST_SECONDS,
            "tracing_sink": "nginx answering 204 to every OTLP/HTTP export",
            "tracing_on_sampler": "parentbased_always_on (every request)",
            "tracing_sampled_sampler": f"parentbased_traceidratio {SAMPLED_RATIO}",
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
