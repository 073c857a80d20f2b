"""Security properties of the contract, checked from outside through the gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest
import websockets.asyncio.client
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.exceptions import ConnectionClosed

from meshdev.customers import Customer, eventually
from meshdev.stack import MeshTarget
from users_service.security import load_private_key

from .conftest import NewCustomer, assert_no_leak

SOME_ID = uuid.UUID(int=1)
PROTECTED = [
    ("GET", "/api/users/me"),
    ("GET", f"/api/users/{SOME_ID}"),
    ("GET", "/api/orders"),
    ("POST", "/api/orders"),
    ("GET", f"/api/orders/{SOME_ID}"),
    ("POST", f"/api/orders/{SOME_ID}/cancel"),
    ("GET", "/api/notifications"),
    ("POST", f"/api/notifications/{SOME_ID}/read"),
    ("GET", "/api/notifications/stream"),
]


def _claims(subject: str, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": "mesh-users",
        "aud": "mesh",
        "sub": subject,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }
    return {**claims, **overrides}


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


class Forger:
    """Makes tokens as the users service would, and every kind of bad one."""

    def __init__(self, key: Ed25519PrivateKey, kid: str) -> None:
        self.key = key
        self.kid = kid

    def sign(self, claims: dict[str, object], key: Ed25519PrivateKey | None = None) -> str:
        return jwt.encode(claims, key or self.key, algorithm="EdDSA", headers={"kid": self.kid})

    def forged(self, kind: str, subject: str) -> str:
        forge: dict[str, Callable[[], str]] = {
            "expired": lambda: self.sign(_claims(subject, exp=int(time.time()) - 60)),
            "other key, known kid": lambda: self.sign(
                _claims(subject), Ed25519PrivateKey.generate()
            ),
            "other key, unknown kid": lambda: jwt.encode(
                _claims(subject),
                Ed25519PrivateKey.generate(),
                algorithm="EdDSA",
                headers={"kid": "someone-else"},
            ),
            "alg none": lambda: (
                f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': self.kid})}.{_b64(_claims(subject))}."
            ),
            "HS256 with a guessable secret": lambda: jwt.encode(
                _claims(subject), self.kid * 2, algorithm="HS256", headers={"kid": self.kid}
            ),
            "wrong audience": lambda: self.sign(_claims(subject, aud="another-api")),
            "wrong issuer": lambda: self.sign(_claims(subject, iss="https://evil.example")),
            "no expiry": lambda: self.sign(
                {k: v for k, v in _claims(subject).items() if k != "exp"}
            ),
            "tampered subject": lambda: _tampered(self.sign(_claims(subject))),
            "garbage": lambda: "not.a.token",
        }
        return forge[kind]()


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(_claims(str(uuid.uuid4())))}.{signature}"


FORGERIES = [
    "expired",
    "other key, known kid",
    "other key, unknown kid",
    "alg none",
    "HS256 with a guessable secret",
    "wrong audience",
    "wrong issuer",
    "no expiry",
    "tampered subject",
    "garbage",
]


@pytest.fixture(scope="module")
async def forger(mesh: MeshTarget) -> Forger:
    async with httpx.AsyncClient(base_url=mesh.url("gateway")) as http:
        keys = (await http.get("/api/auth/jwks.json")).json()["keys"]
    return Forger(load_private_key(mesh.jwt_private_key_file), str(keys[0]["kid"]))


def _assert_401(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"


async def _ws_close_code(mesh: MeshTarget, query: str) -> int | None:
    url = mesh.url("gateway").replace("http://", "ws://", 1) + "/api/notifications/ws" + query
    with pytest.raises(ConnectionClosed) as closed:
        async with websockets.asyncio.client.connect(url) as socket:
            await asyncio.wait_for(socket.recv(), 15)
    return closed.value.rcvd.code if closed.value.rcvd else None


@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_protected_routes_need_a_token(
    gateway: httpx.AsyncClient, method: str, path: str
) -> None:
    _assert_401(await gateway.request(method, path))


async def test_a_websocket_without_a_token_is_closed_with_1008(mesh: MeshTarget) -> None:
    assert await _ws_close_code(mesh, "") == 1008


async def test_a_valid_token_opens_what_the_forged_ones_do_not(
    gateway: httpx.AsyncClient, forger: Forger, customer: Customer
) -> None:
    """The control for the forgeries below: a token made the same way, unaltered, works."""
    response = await gateway.get(
        "/api/users/me", headers=_bearer(forger.sign(_claims(customer.id)))
    )

    assert response.status_code == 200
    assert response.json()["id"] == customer.id


@pytest.mark.parametrize("kind", FORGERIES)
async def test_forged_or_stale_tokens_are_401_everywhere(
    gateway: httpx.AsyncClient, mesh: MeshTarget, forger: Forger, customer: Customer, kind: str
) -> None:
    token = forger.forged(kind, customer.id)

    for method, path in PROTECTED:
        if path.endswith("/stream"):
            continue  # a 200 would not end; checked below without reading the stream
        _assert_401(await gateway.request(method, path, headers=_bearer(token)))
    async with gateway.stream("GET", "/api/notifications/stream", headers=_bearer(token)) as stream:
        _assert_401(stream)
    assert await _ws_close_code(mesh, f"?access_token={token}") == 1008


async def test_a_token_of_an_unknown_user_opens_nothing(
    gateway: httpx.AsyncClient, forger: Forger
) -> None:
    """Validly signed, for an account that does not (or no longer) exist."""
    headers = _bearer(forger.sign(_claims(str(uuid.uuid4()))))

    me = await gateway.get("/api/users/me", headers=headers)
    order = await gateway.post("/api/orders", json=_order(), headers=headers)
    orders = await gateway.get("/api/orders", headers=headers)
    notifications = await gateway.get("/api/notifications", headers=headers)

    assert me.status_code == 404
    _assert_401(order)  # orders asks users whether the account exists before storing anything
    assert orders.json() == {"items": [], "next_cursor": None}
    assert notifications.json() == {"items": [], "next_cursor": None}


async def test_other_users_orders_and_notifications_are_404_by_id_and_absent_from_lists(
    gateway: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    owner, stranger = await new_customer(), await new_customer()
    order = (await owner.place_order()).json()
    (notification,) = await owner.notifications_of("order.created", 1)
    as_stranger = stranger.headers

    responses = [
        await gateway.get(f"/api/orders/{order['id']}", headers=as_stranger),
        await gateway.post(f"/api/orders/{order['id']}/cancel", headers=as_stranger),
        await gateway.get(f"/api/users/{owner.id}", headers=as_stranger),
        await gateway.post(f"/api/notifications/{notification['id']}/read", headers=as_stranger),
    ]

    for response in responses:
        assert response.status_code == 404, response.text
        assert response.headers["content-type"] == "application/problem+json"
    assert (
        responses[0].json()["detail"]
        == (await gateway.get(f"/api/orders/{uuid.uuid4()}", headers=as_stranger)).json()["detail"]
    ), "a stranger cannot tell an existing order from a missing one"
    assert (await stranger.orders_page()).json()["items"] == []
    assert all(n["user_id"] == stranger.id for n in await stranger.notifications())
    untouched = await gateway.get(f"/api/orders/{order['id']}", headers=owner.headers)
    assert untouched.json()["status"] == "created"
    (still_unread,) = await owner.notifications_of("order.created", 1)
    assert still_unread["read"] is False


async def test_other_users_notifications_never_reach_a_stream_or_websocket(
    new_customer: NewCustomer,
) -> None:
    owner, stranger = await new_customer(), await new_customer()

    async with stranger.sse() as stranger_sse, stranger.websocket() as stranger_ws:
        async with owner.sse() as owner_sse:
            await owner.place_order()
            await owner_sse.next(within=20)
        # Pushed after the owner's: if the owner's had leaked, it would have come first.
        await stranger.place_order()
        from_sse = await stranger_sse.next(within=20)
        from_ws = await stranger_ws.next(within=20)

    assert from_sse["user_id"] == from_ws["user_id"] == stranger.id
    assert all(n["user_id"] == stranger.id for n in stranger_sse.received + stranger_ws.received)


async def test_failed_logins_are_rate_limited_through_the_gateway(
    gateway: httpx.AsyncClient, customer: Customer
) -> None:
    email = customer.user["email"]
    login = {"username": email, "password": "not the password"}

    failures = [(await gateway.post("/api/auth/token", data=login)).status_code for _ in range(10)]
    limited = await gateway.post(
        "/api/auth/token", data={"username": email, "password": "correct horse battery"}
    )

    assert failures == [401] * 10
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert 1 <= int(limited.headers["retry-after"]) <= 60


async def test_a_body_over_the_limit_is_413_at_the_gateway(
    gateway: httpx.AsyncClient, customer: Customer
) -> None:
    huge = {"items": [{"sku": "a" * 64, "quantity": 1, "unit_price_cents": 1}] * 20_000}

    response = await gateway.post("/api/orders", json=huge, headers=customer.headers)

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert (await customer.orders_page()).json()["items"] == []


async def test_a_chunked_body_over_the_limit_is_413(
    gateway: httpx.AsyncClient, customer: Customer
) -> None:
    async def chunks() -> Any:
        for _ in range(40):
            yield b"x" * 65_536  # 2.5 MiB in all, with no Content-Length

    response = await gateway.post(
        "/api/orders",
        content=chunks(),
        headers={**customer.headers, "content-type": "application/json"},
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "path",
    [
        "/internal/users/{id}",
        "//internal/users/{id}",
        "/api/users/../../internal/users/{id}",
        "/api/users/%2e%2e/%2e%2e/internal/users/{id}",
        "/api/users/%2E%2E%2F%2E%2E%2Finternal%2Fusers%2F{id}",
        "/api/users/..%2f..%2finternal/users/{id}",
        "/api/users%2f..%2f..%2finternal/users/{id}",
        "/api/users/%252e%252e/%252e%252e/internal/users/{id}",
        "/api/orders/../../internal/users/{id}",
        "/api/notifications/./../../internal/users/{id}",
        "/api/users/..;/..;/internal/users/{id}",
        "/api/users/..%5c..%5cinternal/users/{id}",
        "http://127.0.0.1/internal/users/{id}",
    ],
)
async def test_internal_endpoints_are_unreachable_through_the_gateway(
    mesh: MeshTarget, customer: Customer, path: str
) -> None:
    # Sent raw: HTTP clients would normalise the dot segments before sending.
    status, headers, body = await _raw_get(
        mesh.url("gateway"), path.format(id=customer.id), customer.headers
    )

    assert status == 404, body
    assert headers["content-type"] == "application/problem+json"
    assert customer.user["email"] not in body
    assert_no_leak(body, path)


async def test_service_probes_and_documents_are_the_gateways_own(
    gateway: httpx.AsyncClient,
) -> None:
    ready = await gateway.get("/readyz")
    document = (await gateway.get("/openapi.json")).json()

    assert ready.status_code == 200
    assert not [path for path in document["paths"] if not path.startswith("/api/")]


async def test_tokens_in_query_strings_never_reach_any_log(
    gateway: httpx.AsyncClient, mesh: MeshTarget, customer: Customer
) -> None:
    request_ids = {f"ws-{uuid.uuid4().hex}", f"http-{uuid.uuid4().hex}"}
    ws_id, http_id = sorted(request_ids, key=lambda rid: not rid.startswith("ws"))
    async with websockets.asyncio.client.connect(
        customer.websocket_url(), additional_headers={"X-Request-ID": ws_id}
    ) as socket:
        await customer.place_order()
        assert json.loads(await asyncio.wait_for(socket.recv(), 20))["user_id"] == customer.id
    await gateway.get(
        "/api/orders",
        params={"access_token": customer.token},
        headers={**customer.headers, "X-Request-ID": http_id},
    )

    def logged(service: str, request_id: str) -> bool:
        return request_id in mesh.logs(service)

    # Each request's access line (written when it ends) is in the logs before we look.
    await eventually(
        lambda: _true_async(
            logged("gateway", ws_id)
            and logged("notifications", ws_id)
            and logged("gateway", http_id)
            and logged("orders", http_id)
        )
    )
    signature = customer.token.rsplit(".", 1)[1]
    for name in mesh.names:
        logs = mesh.logs(name)
        assert signature not in logs, f"{name} logged an access token"
    assert "access_token=[REDACTED]" in mesh.logs("gateway")


async def _true_async(value: bool) -> bool:
    return value


async def _raw_get(
    base_url: str, target: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    lines = [f"GET {target} HTTP/1.1", "Host: gateway", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    answer = (await reader.read()).decode(errors="replace")
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    parsed = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), parsed, body


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _order() -> dict[str, Any]:
    return {"items": [{"sku": "a", "quantity": 1, "unit_price_cents": 1}]}
