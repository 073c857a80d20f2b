"""`docker stop` of every deployable's container ends in a clean exit (status 0) before Docker's
SIGKILL — with the broker or the database reachable, and also while either is not: a stop must
never wait for a peer that is gone. The stack is restarted and healthy after each case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from meshdev.containers import ContainerMesh
from meshdev.docker import docker

DEPLOYABLES = ("gateway", "users", "orders", "notifications")
# Docker's default: after it, SIGKILL and exit status 137.
GRACE_SECONDS = "10"


@pytest.fixture
def mesh(containerised_mesh: ContainerMesh) -> Iterator[ContainerMesh]:
    yield containerised_mesh
    containerised_mesh.up()


def _exit(mesh: ContainerMesh, service: str) -> tuple[int, bool, str]:
    state = docker(
        "inspect", "--format", "{{.State.ExitCode}} {{.State.OOMKilled}}", mesh.container(service)
    ).stdout.split()
    return int(state[0]), state[1] == "true", mesh.logs(service)[-3000:]


@pytest.mark.parametrize("unreachable", [None, "rabbitmq", "postgres"])
def test_every_deployable_stops_cleanly_within_its_grace(
    mesh: ContainerMesh, unreachable: str | None
) -> None:
    if unreachable is not None:
        docker("stop", mesh.container(unreachable))
    for service in DEPLOYABLES:
        docker("stop", "--time", GRACE_SECONDS, mesh.container(service))

    for service in DEPLOYABLES:
        status, oom_killed, logs = _exit(mesh, service)
        assert (status, oom_killed) == (0, False), f"{service} exited {status}:\n{logs}"
