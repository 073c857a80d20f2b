"""Authentication and rate limits are enforced at the gateway, before any upstream call."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from meshdev.faults import TcpProxy
from meshdev.processes import free_port


def _foreign_token() -> str:
    """Well-formed, but signed by a key the users service never published."""
    now = int(time.time())
    claims = {
        "sub": "0" * 8 + "-0000-0000-0000-" + "0" * 12,
        "iss": "mesh-users",
        "aud": "mesh",
        "iat": now,
        "exp": now + 300,
        "jti": "x",
    }
    return jwt.encode(
        claims, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "not-ours"}
    )


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer not-a-jwt", f"Bearer {_foreign_token()}"],
)
async def test_requests_without_a_valid_token_are_401_before_any_upstream_call(
    client: httpx.AsyncClient, fresh_hits: list[str], authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    response = await client.get("/api/orders/echo", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 401
    assert fresh_hits == []


async def test_a_tampered_token_is_refused(
    client: httpx.AsyncClient, token: str, fresh_hits: list[str]
) -> None:
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"

    response = await client.get("/api/orders/echo", headers={"Authorization": f"Bearer {tampered}"})

    assert response.status_code == 401
    assert fresh_hits == []


async def test_public_routes_need_no_token(client: httpx.AsyncClient) -> None:
    jwks = await client.get("/api/auth/jwks.json")
    login = await client.post(
        "/api/auth/token", data={"username": "nobody@example.com", "password": "wrong password"}
    )

    assert jwks.status_code == 200
    assert jwks.json()["keys"]
    assert login.status_code == 401  # answered by the users service, not the gateway
    assert login.json()["detail"] != "An access token is required."


async def test_over_the_limit_is_429_with_retry_after_and_ratelimit_headers(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]], token: str
) -> None:
    async with (
        start_gateway(rate_limit_enabled=True, rate_limit="3/minute") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        headers = {"Authorization": f"Bearer {token}"}
        allowed = [await http.get("/api/orders/echo", headers=headers) for _ in range(3)]
        refused = await http.get("/api/orders/echo", headers=headers)

    assert [r.status_code for r in allowed] == [200, 200, 200]
    assert [r.headers["ratelimit-remaining"] for r in allowed] == ["2", "1", "0"]
    assert allowed[0].headers["ratelimit-limit"] == "3"
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["ratelimit-remaining"] == "0"


async def test_rate_limits_count_each_user_apart(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
    token: str,
    client: httpx.AsyncClient,
) -> None:
    async with (
        start_gateway(rate_limit_enabled=True, rate_limit="1/minute") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        first = await http.get("/api/orders/echo", headers={"Authorization": f"Bearer {token}"})
        # Anonymous public requests are counted by client address, apart from the user.
        public = await http.get("/api/auth/jwks.json")

    assert (first.status_code, public.status_code) == (200, 200)


async def test_rate_limiting_can_be_switched_off(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    responses = [await client.get("/api/orders/echo", headers=auth) for _ in range(5)]

    assert {r.status_code for r in responses} == {200}
    assert "ratelimit-limit" not in responses[0].headers


async def test_cors_preflight_is_answered_for_configured_origins(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
) -> None:
    async with (
        start_gateway(cors_allow_origins=["https://app.example.com"]) as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        allowed = await http.options(
            "/api/orders/echo",
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
            },
        )
        refused = await http.options(
            "/api/orders/echo",
            headers={
                "Origin": "https://evil.example.com",
                "Access-Control-Request-Method": "POST",
            },
        )

    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "access-control-allow-origin" not in refused.headers


async def test_without_reachable_token_keys_protected_routes_are_503(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]],
    token: str,
    fresh_hits: list[str],
) -> None:
    async with (
        start_gateway(jwks_url=f"http://127.0.0.1:{free_port()}/api/auth/jwks.json") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.get("/api/orders/echo", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert fresh_hits == []


async def test_replicas_sharing_a_redis_storage_share_the_limit(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]], token: str, redis_url: str
) -> None:
    settings = {
        "rate_limit_enabled": True,
        "rate_limit": "2/minute",
        "rate_limit_storage_uri": redis_url,
    }
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        start_gateway(**settings) as first_url,
        start_gateway(**settings) as second_url,
        httpx.AsyncClient() as http,
    ):
        first = [await http.get(f"{first_url}/api/orders/echo", headers=headers) for _ in range(2)]
        third = await http.get(f"{second_url}/api/orders/echo", headers=headers)

    assert [r.status_code for r in first] == [200, 200]
    assert third.status_code == 429


@pytest.fixture
async def redis_link(redis_url: str) -> AsyncIterator[TcpProxy]:
    """The gateway's only way to the private Redis, to cut or black-hole."""
    target = urlsplit(redis_url)
    proxy = await TcpProxy(target.hostname or "127.0.0.1", target.port or 6379).start()
    try:
        yield proxy
    finally:
        await proxy.close()


@dataclass(frozen=True)
class RedisLinked:
    """Gateways whose rate-limit counters live in Redis behind `link`, a fault proxy."""

    link: TcpProxy
    start_gateway: Callable[..., AbstractAsyncContextManager[str]]

    def start(self, **settings: object) -> AbstractAsyncContextManager[str]:
        return self.start_gateway(
            rate_limit_enabled=True,
            rate_limit_storage_uri=f"redis://127.0.0.1:{self.link.port}",
            **settings,
        )


@pytest.fixture
def redis_linked(
    start_gateway: Callable[..., AbstractAsyncContextManager[str]], redis_link: TcpProxy
) -> RedisLinked:
    return RedisLinked(redis_link, start_gateway)


async def test_without_redis_the_limit_is_still_counted_per_process(
    redis_linked: RedisLinked, auth: dict[str, str]
) -> None:
    async with (
        redis_linked.start(rate_limit="3/minute") as url,
        httpx.AsyncClient(base_url=url, timeout=5.0) as http,
    ):
        await redis_linked.link.cut()
        responses = [await http.get("/api/orders/echo", headers=auth) for _ in range(4)]

    # Neither closed for everyone nor unlimited: this process counts the client on its own.
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert "retry-after" in responses[3].headers


async def test_a_redis_that_never_answers_does_not_hold_requests_up(
    redis_linked: RedisLinked, auth: dict[str, str]
) -> None:
    async with (
        redis_linked.start() as url,
        # The gateway's own read timeout (1 s here) bounds what a client may wait.
        httpx.AsyncClient(base_url=url, timeout=1.0) as http,
    ):
        assert (await http.get("/api/orders/echo", headers=auth)).status_code == 200
        await redis_linked.link.blackhole()
        responses = [await http.get("/api/orders/echo", headers=auth) for _ in range(5)]

    assert [r.status_code for r in responses] == [200] * 5
    assert all("ratelimit-limit" in r.headers for r in responses)
