"""SIGTERM to a service whose broker or database does not answer: its worker ends its lifespan
itself and the master exits 0, long before gunicorn's graceful timeout (10 s here) would kill
the worker. The outbox relay stops waiting at once and says so; the events it could not publish
stay in the outbox and go out after the next start."""

from __future__ import annotations

import asyncio
import signal

import httpx
import pytest

from meshdev.customers import Customer, eventually
from meshdev.faults import TcpProxy
from meshdev.processes import ServiceProcess
from meshdev.stack import RunningMesh

SHUTDOWN_COMPLETE = "Application shutdown complete"
RELAY_STOPPED = "outbox relay stopped while the {} is unreachable"
UNSENT = "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND event->'data'->>'id' = $1"


async def _sigterm(service: ServiceProcess) -> tuple[int, str]:
    """SIGTERM to the master: its exit status, and what the service logged from the signal on.
    The wait is only a bound for a failing test: gunicorn kills a worker that is still stopping
    at its graceful timeout, and then no "Application shutdown complete" is logged."""
    assert service.process is not None
    logged_before = len(service.logs())
    service.signal(signal.SIGTERM)
    exit_code = await asyncio.to_thread(service.process.wait, 60)
    return exit_code, service.logs()[logged_before:]


async def _not_ready_for(mesh: RunningMesh, http: httpx.AsyncClient, name: str, check: str) -> bool:
    response = await http.get(f"{mesh.url(name)}/readyz")
    return response.status_code == 503 and check in response.json()["detail"]


async def test_a_service_started_while_the_broker_is_unreachable_stops_at_once_keeping_events(
    mesh: RunningMesh, broker_link: TcpProxy, http: httpx.AsyncClient
) -> None:
    customer = await Customer.register(mesh, http)
    orders = mesh.processes["orders"]
    await asyncio.to_thread(orders.stop)
    await broker_link.cut()
    orders.start()  # as a container restarted while RabbitMQ is away
    await asyncio.to_thread(orders.wait_ready, path="/healthz")
    placed = await customer.place_order()
    assert placed.status_code == 201, placed.text

    exit_code, logs = await _sigterm(orders)

    assert exit_code == 0
    assert SHUTDOWN_COMPLETE in logs
    assert RELAY_STOPPED.format("broker") in logs
    assert await mesh.fetchval("orders", UNSENT, placed.json()["id"]) == 1  # kept
    await broker_link.restore()
    orders.start()
    await asyncio.to_thread(orders.wait_ready, timeout=60)
    await customer.notifications_of("order.created", 1, within=30)  # sent after the restart


async def test_a_consumer_whose_broker_went_away_stops_at_once(
    mesh: RunningMesh, broker_link: TcpProxy, http: httpx.AsyncClient
) -> None:
    notifications = mesh.processes["notifications"]
    await broker_link.cut()
    await eventually(lambda: _not_ready_for(mesh, http, "notifications", "broker"))

    exit_code, logs = await _sigterm(notifications)

    assert exit_code == 0
    assert SHUTDOWN_COMPLETE in logs
    # Its consumers did not wait for the connection to come back to cancel their subscriptions.
    assert "consumer of notifications stops without its channel" in logs
    assert RELAY_STOPPED.format("broker") in logs


# The fault proxy leaves the sockets of clients that hung up inside its black hole (those of the
# stopped service) to the garbage collector, which warns that they were not closed: the socket,
# its transport or its stream writer, whichever it finalizes first.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <(socket\.socket|function (StreamWriter|_SelectorTransport)\.)"
    ":pytest.PytestUnraisableExceptionWarning"
)
async def test_a_service_whose_database_stopped_answering_stops_at_once(
    mesh: RunningMesh, database_link: TcpProxy, http: httpx.AsyncClient
) -> None:
    """Packets lost, no reset: the relay's claim would wait for an answer, and closing a
    pooled connection waits for the server's goodbye."""
    orders = mesh.processes["orders"]
    customer = await Customer.register(mesh, http)
    placed = await customer.place_order()
    assert placed.status_code == 201, placed.text

    async def relay_publishing() -> bool:  # not in a backoff left by an earlier outage
        unsent: int = await mesh.fetchval("orders", UNSENT, placed.json()["id"])
        return unsent == 0

    await eventually(relay_publishing, within=30)
    await database_link.blackhole()
    # Readiness gives the database 2 s; the relay has claimed (every second) meanwhile.
    await eventually(lambda: _not_ready_for(mesh, http, "orders", "database"))

    exit_code, logs = await _sigterm(orders)

    assert exit_code == 0
    assert SHUTDOWN_COMPLETE in logs
    assert RELAY_STOPPED.format("database") in logs
