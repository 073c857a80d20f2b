"""One client's rate limit holds across two gateway processes sharing the machine's Redis; while
Redis does not answer (a black hole: connections hang, nothing is refused) both keep serving
promptly, each counting on its own, log it once and say so in the gauge
`rate_limit.storage.available`; once it answers again the count is shared again."""

from __future__ import annotations

import json
import time

import httpx

from meshdev.customers import Account, eventually
from meshdev.faults import TcpProxy
from meshdev.otlp import OtlpReceiver
from meshdev.processes import ServiceProcess
from meshdev.redis import keys_under
from meshdev.stack import RunningMesh

from .conftest import GATEWAYS, LIMIT, RETRY_SECONDS

GAUGE = "rate_limit.storage.available"
FALLBACK_WARNING = "rate-limit storage unreachable"


async def _alternating(
    gateways: tuple[ServiceProcess, ...], account: Account, count: int
) -> list[httpx.Response]:
    """`count` requests of one client, to each gateway in turn."""
    async with httpx.AsyncClient(timeout=15) as http:
        return [
            await http.get(
                f"{gateways[n % len(gateways)].url}/api/users/me", headers=account.headers
            )
            for n in range(count)
        ]


def _gauge(otlp: OtlpReceiver, service: str) -> float | None:
    """The last value `service` exported for the gauge, for its rate limiter (a gateway also
    reports its stream leases, which only try Redis when streams open)."""
    limiter = "login" if service == "users" else "gateway"
    values = [
        p.value
        for p in otlp.points
        if p.metric == GAUGE
        and p.service == service
        and p.attributes.get("rate_limit.limiter") == limiter
    ]
    return values[-1] if values else None


def _warnings(process: ServiceProcess) -> list[dict[str, str]]:
    records = [json.loads(line) for line in process.logs().splitlines() if line.startswith("{")]
    return [r for r in records if r.get("level") == "WARNING"]


async def test_one_clients_limit_holds_across_two_gateway_processes(
    users: RunningMesh, gateways: tuple[ServiceProcess, ...], prefix: str
) -> None:
    account = await Account.register(users.url("users"))

    responses = await _alternating(gateways, account, LIMIT + 2)

    assert [r.status_code for r in responses] == [200] * LIMIT + [429, 429]
    remaining = [int(r.headers["ratelimit-remaining"]) for r in responses[:LIMIT]]
    assert remaining == list(range(LIMIT - 1, -1, -1))  # one count, whichever gateway answers
    assert all(1 <= int(r.headers["retry-after"]) <= 60 for r in responses[LIMIT:])
    assert any(account.id in key for key in await keys_under(prefix))


async def test_without_redis_the_gateways_keep_serving_promptly_and_say_so(
    users: RunningMesh,
    gateways: tuple[ServiceProcess, ...],
    redis_link: TcpProxy,
    otlp: OtlpReceiver,
) -> None:
    account = await Account.register(users.url("users"))
    warned_before = [len(_warnings(process)) for process in gateways]
    await redis_link.blackhole()
    try:
        started = time.monotonic()
        during = await _alternating(gateways, account, 2 * LIMIT + 2)
        took = time.monotonic() - started
        # Logins keep working too: the users service's failed-login limits fall back alike.
        newcomer = await Account.register(users.url("users"))

        # Served, not closed for everyone; and not unlimited: each process counts on its own.
        assert [r.status_code for r in during] == [200] * 2 * LIMIT + [429, 429]
        # A generous bound: requests did not each wait for Redis (the gateway's answer timeout
        # is 10 s; the storage timeout 0.1 s, paid by the first request of each process).
        assert took < 10
        assert newcomer.token
        await otlp.wait_for(
            lambda: all(_gauge(otlp, name) == 0 for name in (*GATEWAYS, "users")),
            what="the gauge at 0 from both gateways and users",
        )
        for process, before in zip(gateways, warned_before, strict=True):
            new = [w for w in _warnings(process)[before:] if FALLBACK_WARNING in str(w)]
            assert len(new) == 1, "one warning per outage and process, not one per request"
    finally:
        await redis_link.restore()

    async def counting_in_redis_again() -> bool:
        # Requests make each process try Redis again (every RETRY_SECONDS).
        await _alternating(gateways, await Account.register(users.url("users")), 2)
        return all(_gauge(otlp, name) == 1 for name in GATEWAYS)

    await eventually(counting_in_redis_again, within=10 * RETRY_SECONDS + 10, every=0.5)
    shared_again = await _alternating(gateways, await Account.register(users.url("users")), 7)
    assert [r.status_code for r in shared_again] == [200] * LIMIT + [429, 429]
