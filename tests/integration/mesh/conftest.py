"""The whole mesh, tested only from outside through the gateway, on two targets:

- `native`: every deployable under its production command, throw-away databases and vhost,
  every process on a free port (one mesh per session, per xdist worker);
- `containers`: the images `make images` built, run by compose.yaml (meshdev.containers); skipped
  with its reason when no Docker engine answers, failed instead under `CI=true`.

`MESH_TARGETS=native` (or `containers`) runs one of them only. Every response a test receives is
checked for leaks (password hashes, stack traces, SQL).
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from meshdev.customers import Customer
from meshdev.stack import MeshTarget, RunningMesh, running_mesh

ARTIFACTS = Path(__file__).resolve().parents[3] / ".test-artifacts"

# The gateway's own rate limit stays on (its headers are part of every answer) but high enough
# that the suite and the fuzzer never meet it; the login limit of users keeps its default.
MESH_ENV = {"RATE_LIMIT": "2000/second;200000/minute", "LOG_LEVEL": "INFO"}

LEAKS = re.compile(
    r"\$argon2|\$2[aby]\$|password_hash"  # password hashes
    r"|Traceback \(most recent call last\)|File \"/"  # stack traces
    r"|\b(?:SELECT|INSERT INTO|UPDATE|DELETE FROM)\b.+\b(?:FROM|VALUES|SET|WHERE)\b"  # SQL
    r"|sqlalchemy|asyncpg|psycopg",
    re.IGNORECASE | re.DOTALL,
)


def assert_no_leak(body: str, where: str) -> None:
    found = LEAKS.search(body)
    assert found is None, f"{where} leaks {found.group(0)!r}: {body[:500]}"


async def _check_response(response: httpx.Response) -> None:
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        return  # a live stream; its events are checked by the tests that read them
    body = (await response.aread()).decode(errors="replace")
    assert_no_leak(body, f"{response.request.method} {response.request.url.path}")
    assert "x-request-id" in response.headers
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers.get("x-trace-id", ""))


def client_address() -> str:
    """A client address of its own (TEST-NET-2), so per-address limits of one test (failed
    logins) never reach another: the suite is a trusted proxy (127.0.0.1) to the gateway."""
    return f"198.51.100.{secrets.randbelow(254) + 1}"


TARGETS = [
    target
    for target in ("native", "containers")
    if target in os.environ.get("MESH_TARGETS", "native,containers").split(",")
]


@pytest.fixture(scope="session")
async def native_mesh(worker_id: str) -> AsyncIterator[RunningMesh]:
    directory = ARTIFACTS / "logs" / f"mesh-{worker_id}"
    directory.mkdir(parents=True, exist_ok=True)
    for old_log in directory.glob("*.log"):
        old_log.unlink()
    async with running_mesh(
        directory, names=("users", "orders", "notifications", "gateway"), env=MESH_ENV
    ) as running:
        yield running


@pytest.fixture(scope="session", params=TARGETS)
def mesh(request: pytest.FixtureRequest) -> MeshTarget:
    # containerised_mesh: meshdev.pytest_plugin, shared with tests/containers
    fixture = "native_mesh" if request.param == "native" else "containerised_mesh"
    target: MeshTarget = request.getfixturevalue(fixture)
    return target


@pytest.fixture
async def gateway(mesh: MeshTarget) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the gateway only; every response it receives is checked for leaks."""
    async with httpx.AsyncClient(
        base_url=mesh.url("gateway"),
        timeout=15,
        headers={"X-Forwarded-For": client_address()},
        event_hooks={"response": [_check_response]},
    ) as client:
        yield client


NewCustomer = Callable[[], Awaitable[Customer]]


@pytest.fixture
def new_customer(mesh: MeshTarget, gateway: httpx.AsyncClient) -> NewCustomer:
    """Registers a customer who talks to the gateway only."""

    async def register() -> Customer:
        return await Customer.register(mesh, gateway)

    return register


@pytest.fixture
async def customer(new_customer: NewCustomer) -> Customer:
    return await new_customer()
