from __future__ import annotations

import json

import httpx
import pytest

from meshdev.api import PASSWORD, UsersApi


async def test_register_returns_the_user_without_secrets(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/users", json={"email": "Ada@Example.com", "password": PASSWORD, "name": "Ada"}
    )

    assert response.status_code == 201
    body = response.json()
    assert set(body) == {"id", "email", "name", "created_at"}
    assert body["email"] == "ada@example.com"
    assert "argon2" not in response.text
    assert PASSWORD not in response.text


@pytest.mark.parametrize("duplicate", ["ada@example.com", "ADA@EXAMPLE.COM", "Ada@example.Com"])
async def test_duplicate_email_in_any_case_is_409(
    api: UsersApi, client: httpx.AsyncClient, duplicate: str
) -> None:
    await api.register("ada@example.com")

    response = await client.post(
        "/api/users", json={"email": duplicate, "password": PASSWORD, "name": "Other"}
    )

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["title"] == "Conflict"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not-an-email", "password": PASSWORD, "name": "A"}, "email"),
        ({"email": "a@example.com", "password": "short", "name": "A"}, "password"),
        ({"email": "a@example.com", "password": "x" * 129, "name": "A"}, "password"),
        ({"email": "a@example.com", "password": PASSWORD, "name": ""}, "name"),
        ({"email": "a@example.com", "password": PASSWORD, "name": "n" * 101}, "name"),
        ({"email": "a@example.com", "password": PASSWORD}, "name"),
        ({"email": "a@example.com", "password": 12345678, "name": "A"}, "password"),
        ({"email": "a@example.com", "password": PASSWORD, "name": "A\x00B"}, "name"),
        ({"email": "a\x00b@example.com", "password": PASSWORD, "name": "A"}, "email"),
        ({"email": "a@example.com", "password": PASSWORD + "\ud800", "name": "A"}, "password"),
    ],
)
async def test_invalid_registration_is_422_problem_without_the_input(
    client: httpx.AsyncClient, body: dict[str, object], field: str
) -> None:
    # json.dumps escapes what httpx's own encoder cannot send (unpaired surrogates).
    response = await client.post(
        "/api/users", content=json.dumps(body), headers={"content-type": "application/json"}
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 422
    assert any(error["loc"][-1] == field for error in problem["errors"])
    assert all(set(error) == {"loc", "msg", "type"} for error in problem["errors"])
    assert PASSWORD not in response.text


async def test_non_json_body_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/users", content=b"email=a", headers={"content-type": "text/plain"}
    )

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
