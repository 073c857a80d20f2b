"""Every endpoint's validation errors, through the gateway: 422 problem+json with `errors`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from meshdev.customers import Customer

NOT_A_UUID = "not-a-uuid"
ITEM = {"sku": "a", "quantity": 1, "unit_price_cents": 1}
USER = {"email": "v@example.com", "password": "long enough", "name": "V"}


@dataclass(frozen=True)
class Bad:
    """One invalid request."""

    method: str
    path: str
    json: Any = None
    content: bytes | None = None
    data: dict[str, str] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str | int] = field(default_factory=dict)

    def send(self, client: httpx.AsyncClient, auth: dict[str, str]) -> Any:
        kwargs: dict[str, Any] = {"headers": {**auth, **self.headers}, "params": self.params}
        if self.json is not None:
            kwargs["json"] = self.json
        elif self.content is not None:
            kwargs["content"] = self.content
        elif self.data is not None:
            kwargs["data"] = self.data
        return client.request(self.method, self.path, **kwargs)


def _item(**changes: Any) -> dict[str, Any]:
    return {"items": [{**ITEM, **changes}]}


def _user(**changes: Any) -> dict[str, Any]:
    return {**USER, **changes}


JSON = {"content-type": "application/json"}

CASES: dict[str, Bad] = {
    # POST /api/users
    "users: password of the wrong type": Bad("POST", "/api/users", json=_user(password=12345678)),
    "users: missing fields": Bad("POST", "/api/users", json={"email": "v@example.com"}),
    "users: not an email": Bad("POST", "/api/users", json=_user(email="nobody")),
    "users: password too short": Bad("POST", "/api/users", json=_user(password="short")),
    "users: password too long": Bad("POST", "/api/users", json=_user(password="p" * 129)),
    "users: name too long": Bad("POST", "/api/users", json=_user(name="n" * 101)),
    "users: empty name": Bad("POST", "/api/users", json=_user(name="")),
    "users: huge email": Bad("POST", "/api/users", json=_user(email="e" * 300_000 + "@x.com")),
    "users: an unknown field": Bad("POST", "/api/users", json=_user(admin=True)),
    "users: NUL in the name": Bad("POST", "/api/users", json=_user(name="A\x00B")),
    "users: unpaired surrogate in the password": Bad(
        "POST",
        "/api/users",
        content=json.dumps(_user(password="p" * 8 + "\ud800")).encode(),
        headers=JSON,
    ),
    "users: a list, not an object": Bad("POST", "/api/users", json=[USER]),
    "users: not JSON": Bad("POST", "/api/users", content=b"{not json", headers=JSON),
    "users: empty body": Bad("POST", "/api/users", content=b"", headers=JSON),
    "users: a form, not JSON": Bad("POST", "/api/users", data=USER),
    "users: text/plain": Bad(
        "POST",
        "/api/users",
        content=b'{"email": "v@example.com"}',
        headers={"content-type": "text/plain"},
    ),
    # POST /api/auth/token
    "token: missing password": Bad("POST", "/api/auth/token", data={"username": "v@example.com"}),
    "token: NUL in the username": Bad(
        "POST", "/api/auth/token", data={"username": "v\x00@example.com", "password": "x" * 8}
    ),
    "token: JSON, not a form": Bad(
        "POST", "/api/auth/token", json={"username": "v@example.com", "password": "x" * 8}
    ),
    "token: password too long": Bad(
        "POST", "/api/auth/token", data={"username": "v@example.com", "password": "p" * 129}
    ),
    # GET /api/users/{id}
    "user by id: bad UUID": Bad("GET", f"/api/users/{NOT_A_UUID}"),
    # POST /api/orders
    "orders: no items": Bad("POST", "/api/orders", json={"items": []}),
    "orders: missing items": Bad("POST", "/api/orders", json={}),
    "orders: empty sku": Bad("POST", "/api/orders", json=_item(sku="")),
    "orders: sku too long": Bad("POST", "/api/orders", json=_item(sku="s" * 65)),
    "orders: quantity 0": Bad("POST", "/api/orders", json=_item(quantity=0)),
    "orders: quantity 1001": Bad("POST", "/api/orders", json=_item(quantity=1001)),
    "orders: huge quantity": Bad("POST", "/api/orders", json=_item(quantity=10**40)),
    "orders: quantity as text": Bad("POST", "/api/orders", json=_item(quantity="many")),
    "orders: fractional quantity": Bad("POST", "/api/orders", json=_item(quantity=1.5)),
    "orders: negative price": Bad("POST", "/api/orders", json=_item(unit_price_cents=-1)),
    "orders: price too high": Bad("POST", "/api/orders", json=_item(unit_price_cents=10**7 + 1)),
    "orders: item missing a field": Bad("POST", "/api/orders", json={"items": [{"sku": "a"}]}),
    "orders: an unknown item field": Bad("POST", "/api/orders", json=_item(discount=5)),
    "orders: items not a list": Bad("POST", "/api/orders", json={"items": "a"}),
    "orders: 101 items": Bad("POST", "/api/orders", json={"items": [ITEM] * 101}),
    "orders: 15 000 items (690 kB, under the body limit)": Bad(
        "POST", "/api/orders", json={"items": [ITEM] * 15_000}
    ),
    "orders: NUL in a sku": Bad("POST", "/api/orders", json=_item(sku="a\x00")),
    "orders: not JSON": Bad("POST", "/api/orders", content=b"items", headers=JSON),
    "orders: text/plain": Bad(
        "POST",
        "/api/orders",
        content=b'{"items": [{"sku": "a", "quantity": 1, "unit_price_cents": 1}]}',
        headers={"content-type": "text/plain"},
    ),
    "orders: idempotency key too long": Bad(
        "POST", "/api/orders", json=_item(), headers={"Idempotency-Key": "k" * 256}
    ),
    "orders: empty idempotency key": Bad(
        "POST", "/api/orders", json=_item(), headers={"Idempotency-Key": ""}
    ),
    # GET /api/orders
    "orders list: limit 0": Bad("GET", "/api/orders", params={"limit": 0}),
    "orders list: limit 101": Bad("GET", "/api/orders", params={"limit": 101}),
    "orders list: limit not a number": Bad("GET", "/api/orders", params={"limit": "ten"}),
    "orders list: forged cursor": Bad("GET", "/api/orders", params={"cursor": "not-a-cursor"}),
    "orders list: huge cursor": Bad("GET", "/api/orders", params={"cursor": "c" * 600}),
    # GET /api/orders/{id}, POST /api/orders/{id}/cancel
    "order by id: bad UUID": Bad("GET", f"/api/orders/{NOT_A_UUID}"),
    "order by id: almost a UUID": Bad("GET", "/api/orders/0000000-0000-0000-0000-000000000000"),
    "cancel: bad UUID": Bad("POST", f"/api/orders/{NOT_A_UUID}/cancel"),
    # GET /api/notifications, POST /api/notifications/{id}/read
    "notifications list: limit 0": Bad("GET", "/api/notifications", params={"limit": 0}),
    "notifications list: limit 101": Bad("GET", "/api/notifications", params={"limit": 101}),
    "notifications list: forged cursor": Bad(
        "GET", "/api/notifications", params={"cursor": "eyJ0IjogMX0"}
    ),
    "read: bad UUID": Bad("POST", f"/api/notifications/{NOT_A_UUID}/read"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
async def test_invalid_input_is_a_422_problem_with_errors(
    gateway: httpx.AsyncClient, validation_customer: Customer, case: Bad
) -> None:
    response = await case.send(gateway, validation_customer.headers)

    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert problem["trace_id"] == response.headers["x-trace-id"]
    assert problem["errors"], problem
    for error in problem["errors"]:
        assert set(error) == {"loc", "msg", "type"}
        assert isinstance(error["loc"], list)
    # Nothing of the rejected input is echoed back (it may hold a password).
    assert "p" * 129 not in response.text
    assert "12345678" not in response.text


async def test_nothing_invalid_was_stored(
    gateway: httpx.AsyncClient, validation_customer: Customer
) -> None:
    orders = await gateway.get("/api/orders", headers=validation_customer.headers)
    registered = await gateway.post(
        "/api/auth/token", data={"username": USER["email"], "password": USER["password"]}
    )

    assert orders.json()["items"] == []
    assert registered.status_code == 401


@pytest.fixture(scope="module")
async def validation_customer(mesh: Any) -> Customer:
    """One customer for the whole table (registration costs an argon2 hash)."""
    async with httpx.AsyncClient(timeout=15) as http:
        return await Customer.register(mesh, http)
