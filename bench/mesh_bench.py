"""`make bench`: what the mesh costs per request, side by side with nginx, in one run.

Absolute figures drift on a shared 2-core machine; the ratios between figures measured in the same
run are what the README quotes. Every load loop is bounded in time and count.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from loadgen import LoadResult, Nginx, cpu_seconds, wrk

from meshdev.api import UsersApi
from meshdev.mesh import MESH
from meshdev.processes import free_port
from meshdev.stack import RunningMesh, running_mesh

RESULTS = Path(__file__).parent / "results"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
CONNECTIONS = 32

BASE_ENV = {
    "WEB_CONCURRENCY": "1",
    "LOG_LEVEL": "WARNING",
    # The gateway keeps auth and rate limiting on, with a limit the load stays under.
    "RATE_LIMIT": "1000000/minute",
}


def _machine() -> dict[str, Any]:
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
        "python": platform.python_version(),
        "kernel": platform.release(),
        "nginx": subprocess.run(
            ["nginx", "-v"], capture_output=True, text=True, check=False
        ).stderr.strip(),
    }


def measured(url: str, pid: int, **load: Any) -> dict[str, Any]:
    """A wrk run, with the CPU milliseconds per request of the process tree `pid`."""
    wrk(url, seconds=2, **load)  # warm-up: connections, caches, JWKS
    before = cpu_seconds(pid)
    result: LoadResult = wrk(url, seconds=SECONDS, **load)
    spent = cpu_seconds(pid) - before
    return {
        **result.as_dict(),
        "cpu_ms_per_request": round(spent * 1000 / max(result.requests, 1), 3),
    }


async def token_for(base_url: str) -> str:
    async with httpx.AsyncClient(base_url=base_url) as client:
        return await UsersApi(client).token("bench@example.com")


async def gateway_overhead(mesh: RunningMesh) -> dict[str, Any]:
    token = await token_for(mesh.url("users"))
    headers = {"Authorization": f"Bearer {token}"}
    users = mesh.processes["users"]
    assert users.process is not None
    figures: dict[str, Any] = {
        "direct": measured(f"{users.url}/api/users/me", users.process.pid, headers=headers)
    }
    nginx = Nginx(listen_port=free_port(), upstream=f"127.0.0.1:{users.port}").start()
    try:
        await asyncio.sleep(0.5)
        figures["nginx"] = measured(
            f"http://127.0.0.1:{nginx.port}/api/users/me", nginx.pid, headers=headers
        )
    finally:
        nginx.stop()
    if "gateway" in mesh.processes:
        gateway = mesh.processes["gateway"]
        assert gateway.process is not None
        figures["gateway"] = measured(
            f"{gateway.url}/api/users/me", gateway.process.pid, headers=headers
        )
    return figures


def _ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


def ratios(figures: Mapping[str, Any]) -> dict[str, Any]:
    overhead = figures["gateway_overhead"]
    result: dict[str, Any] = {}
    if "gateway" in overhead:
        result["gateway_vs_nginx_throughput"] = _ratio(
            overhead["gateway"]["requests_per_second"], overhead["nginx"]["requests_per_second"]
        )
        result["gateway_cpu_vs_users_cpu_per_request"] = _ratio(
            overhead["gateway"]["cpu_ms_per_request"], overhead["direct"]["cpu_ms_per_request"]
        )
    return result


def markdown(report: Mapping[str, Any]) -> str:
    lines = [
        f"# Benchmark — {report['date']}",
        "",
        f"Machine: {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"{report['machine']['memory_gib']} GiB, Python {report['machine']['python']}; "
        "one gunicorn worker per process; wrk, "
        f"{CONNECTIONS} connections, {SECONDS} s per figure.",
        "",
        "## Gateway overhead: `GET /api/users/me`",
        "",
        "| path | req/s | p50 ms | p99 ms | proxy CPU ms/req | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["figures"]["gateway_overhead"].items():
        lines.append(
            f"| {name} | {row['requests_per_second']} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['cpu_ms_per_request']} | {row['errors']} |"
        )
    lines += ["", "## Ratios (same run)", "", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in report["ratios"].items()]
    return "\n".join(lines) + "\n"


async def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as directory:
        workdir = Path(directory)
        async with running_mesh(
            workdir,
            names=[d.name for d in MESH],
            env={**BASE_ENV, "OTEL_SDK_DISABLED": "true"},
        ) as mesh:
            figures = {"gateway_overhead": await gateway_overhead(mesh)}
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "deployables": [d.name for d in MESH],
        "figures": figures,
        "ratios": ratios(figures),
        "duration_seconds": round(time.monotonic() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(markdown(report))
    sys.stdout.write(markdown(report))


if __name__ == "__main__":
    asyncio.run(main())
