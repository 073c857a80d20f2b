"""Start a deployable exactly as production does (gunicorn + uvicorn workers) on a free port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

GUNICORN_CONFIG = "python:meshkit.gunicorn_conf"
ACCESS_LOGGER = "meshkit.access"  # one line per request, from meshkit's middleware


def access_records(logs: str) -> list[dict[str, Any]]:
    """The access lines of a process's log (`ServiceProcess.logs()`), parsed."""
    records = (json.loads(line) for line in logs.splitlines() if f'"{ACCESS_LOGGER}"' in line)
    return [record for record in records if record["logger"] == ACCESS_LOGGER]


def production_command(package: str) -> list[str]:
    """The one serving command, shared by `make run`, the Dockerfile and Kubernetes."""
    return ["gunicorn", "--config", GUNICORN_CONFIG, f"{package}.main:create_app()"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _executable(name: str) -> str:
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else (shutil.which(name) or name)


class ServiceProcess:
    """One service under its production command; logs go to `log_path`."""

    def __init__(
        self,
        package: str,
        *,
        env: Mapping[str, str],
        log_path: Path,
        port: int | None = None,
        workers: int = 1,
        bin_dir: Path | None = None,
    ) -> None:
        self.package = package
        # Another environment's executables (an earlier commit's, for side-by-side benchmarks).
        self.bin_dir = bin_dir
        self.port = port or free_port()
        self.log_path = log_path
        self.env = {
            **os.environ,
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "GRACEFUL_TIMEOUT": "10",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServiceProcess:
        command = production_command(self.package)
        command[0] = str(self.bin_dir / command[0]) if self.bin_dir else _executable(command[0])
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        return self

    def wait_ready(self, *, path: str = "/readyz", timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.package} exited early:\n{self.logs()[-4000:]}")
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.package} not ready after {timeout}s:\n{self.logs()[-4000:]}")

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, sig)

    def stop(self, *, timeout: float = 20.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL if it does not exit in time."""
        if self.process is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.process.wait(5)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(5)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
