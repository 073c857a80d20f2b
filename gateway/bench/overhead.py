"""Gateway overhead, side by side with nginx, on the same users service (one run, one machine).

    uv run python gateway/bench/overhead.py [--seconds 10] [--connections 32] [--rate-limit off]
        [--tracing]

Starts a throw-away users database and the users service, the gateway (auth and rate limiting
on) and nginx as a plain keep-alive reverse proxy, all with one worker, then drives the same
authenticated `GET /api/users/me` with wrk: (a) directly, (b) through the gateway, (c) through
nginx. Prints throughput, p50/p99 and the CPU milliseconds per request of each process's worker
(from /proc/<pid>/stat before and after). Absolute figures drift on a shared machine; the ratios
from one run are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshdev.api import UsersApi
from meshdev.postgres import create_database, drop_database, sqlalchemy_url
from meshdev.processes import ServiceProcess, free_port
from meshkit.migrations import upgrade_to_head
from users_service.migrate import MIGRATIONS

TICKS = os.sysconf("SC_CLK_TCK")
NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream users {{ server 127.0.0.1:{users_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location /v1/ {{ return 204; }}
        location / {{
            proxy_pass http://users;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def worker_pid(master: int) -> int:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(children[0]) if children else master


def wrk(url: str, token: str, seconds: int, connections: int) -> dict[str, float]:
    output = subprocess.run(  # noqa: S603 - fixed arguments
        [  # noqa: S607 - wrk from the PATH (Debian package)
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def latency_ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        assert match, output
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": requests,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),  # type: ignore[union-attr]
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def measure(
    name: str, url: str, token: str, pids: dict[str, int], seconds: int, connections: int
) -> dict[str, float]:
    wrk(url, token, 3, connections)  # warm-up
    before = {role: cpu_seconds(pid) for role, pid in pids.items()}
    result = wrk(url, token, seconds, connections)
    for role, pid in pids.items():
        result[f"{role}_cpu_ms_per_request"] = round(
            (cpu_seconds(pid) - before[role]) * 1000 / max(1, result["requests"]), 3
        )
    print(name, json.dumps(result))
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--gateway-package",
        default="mesh_gateway",
        help="serve `<package>.main:app` as the gateway (to compare variants of the hot path)",
    )
    parser.add_argument("--rate-limit", default="1000000/minute", help="'off' to switch it off")
    parser.add_argument("--tracing", action="store_true", help="the gateway exports its spans")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    database = await create_database("bench_users")
    processes: list[ServiceProcess] = []
    nginx: subprocess.Popen[bytes] | None = None
    try:
        await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(database))
        key = work / "jwt.pem"
        key.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        quiet = {"ENVIRONMENT": "test", "OTEL_SDK_DISABLED": "true", "LOG_LEVEL": "WARNING"}
        users = ServiceProcess(
            "users_service",
            env={
                **quiet,
                "DATABASE_URL": sqlalchemy_url(database),
                "JWT_PRIVATE_KEY_FILE": str(key),
            },
            log_path=work / "users.log",
        ).start()
        processes.append(users)
        users.wait_ready()
        nginx_port = free_port()
        (work / "nginx.conf").write_text(
            NGINX_CONF.format(dir=work, users_port=users.port, port=nginx_port)
        )
        nginx = subprocess.Popen(  # noqa: S603, ASYNC220 - started once, before measuring
            [
                shutil.which("nginx") or "/usr/sbin/nginx",
                "-c",
                str(work / "nginx.conf"),
                "-p",
                str(work),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await asyncio.sleep(0.5)

        # With --tracing the gateway exports its spans over OTLP/HTTP to nginx, which
        # discards them (`return 204`): the cost of tracing without a collector's.
        tracing = (
            {
                "OTEL_SDK_DISABLED": "false",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{nginx_port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            }
            if args.tracing
            else {}
        )
        gateway = ServiceProcess(
            args.gateway_package,
            env={
                **quiet,
                "USERS_URL": users.url,
                "ORDERS_URL": "",
                "NOTIFICATIONS_URL": "",
                "RATE_LIMIT_ENABLED": "false" if args.rate_limit == "off" else "true",
                "RATE_LIMIT": "1/second" if args.rate_limit == "off" else args.rate_limit,
                **tracing,
            },
            log_path=work / "gateway.log",
        ).start()
        processes.append(gateway)
        gateway.wait_ready()

        async with httpx.AsyncClient(base_url=users.url) as client:
            token = await UsersApi(client).token("bench@example.com")

        assert users.process is not None
        assert gateway.process is not None
        users_pid = worker_pid(users.process.pid)
        gateway_pid = worker_pid(gateway.process.pid)
        path = "/api/users/me"
        seconds, connections = args.seconds, args.connections
        direct = measure(
            "direct", users.url + path, token, {"users": users_pid}, seconds, connections
        )
        through_gateway = measure(
            "gateway",
            gateway.url + path,
            token,
            {"users": users_pid, "proxy": gateway_pid},
            seconds,
            connections,
        )
        through_nginx = measure(
            "nginx",
            f"http://127.0.0.1:{nginx_port}{path}",
            token,
            {"users": users_pid, "proxy": worker_pid(nginx.pid)},
            seconds,
            connections,
        )
        print(
            json.dumps(
                {
                    "gateway_vs_nginx_throughput": round(
                        through_gateway["rps"] / through_nginx["rps"], 3
                    ),
                    "gateway_vs_direct_throughput": round(
                        through_gateway["rps"] / direct["rps"], 3
                    ),
                    "gateway_cpu_vs_users_cpu": round(
                        through_gateway["proxy_cpu_ms_per_request"]
                        / through_gateway["users_cpu_ms_per_request"],
                        3,
                    ),
                }
            )
        )
    finally:
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        for process in reversed(processes):
            process.stop()
        await drop_database(database)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
