from __future__ import annotations

import uuid

import httpx

from meshdev.api import UsersApi


async def test_own_id_is_visible(api: UsersApi, client: httpx.AsyncClient) -> None:
    token = await api.token("ada@example.com")
    me = (await client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})).json()

    response = await client.get(
        f"/api/users/{me['id']}", headers={"Authorization": f"Bearer {token}"}
    )

    assert response.status_code == 200
    assert response.json() == me


async def test_another_users_id_is_404_as_if_it_did_not_exist(
    api: UsersApi, client: httpx.AsyncClient
) -> None:
    other = await api.register("grace@example.com")
    token = await api.token("ada@example.com")
    headers = {"Authorization": f"Bearer {token}"}

    existing = await client.get(f"/api/users/{other['id']}", headers=headers)
    missing = await client.get(f"/api/users/{uuid.uuid4()}", headers=headers)

    assert existing.status_code == missing.status_code == 404
    assert existing.json()["detail"] == missing.json()["detail"]


async def test_bad_uuid_in_path_is_422(api: UsersApi, client: httpx.AsyncClient) -> None:
    token = await api.token()

    response = await client.get("/api/users/42", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 422
    assert response.json()["errors"][0]["loc"] == ["path", "user_id"]


async def test_internal_lookup_answers_other_services(
    api: UsersApi, client: httpx.AsyncClient
) -> None:
    user = await api.register()

    found = await client.get(f"/internal/users/{user['id']}")
    missing = await client.get(f"/internal/users/{uuid.uuid4()}")

    assert found.status_code == 204
    assert found.content == b""
    assert missing.status_code == 404


async def test_internal_endpoints_are_not_in_the_public_api_document(
    client: httpx.AsyncClient,
) -> None:
    document = (await client.get("/openapi.json")).json()

    assert not [path for path in document["paths"] if path.startswith("/internal")]
    assert "OAuth2PasswordBearer" in document["components"]["securitySchemes"]
