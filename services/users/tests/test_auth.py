from __future__ import annotations

import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from meshdev.api import PASSWORD, UsersApi
from users_service.security import TokenIssuer


def _claims(user_id: str, **overrides: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": "mesh-users",
        "aud": "mesh",
        "sub": user_id,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **overrides,
    }


def _sign(app: FastAPI, claims: dict[str, object], key: Ed25519PrivateKey | None = None) -> str:
    issuer: TokenIssuer = app.state.token_issuer
    signing_key = key or issuer._private_key
    return jwt.encode(claims, signing_key, algorithm="EdDSA", headers={"kid": issuer.kid})


async def test_login_issues_a_bearer_token_that_opens_me(
    api: UsersApi, client: httpx.AsyncClient
) -> None:
    user = await api.register()

    response = await api.login()

    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    me = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json() == user


async def test_token_carries_the_standard_claims_and_kid(app: FastAPI, api: UsersApi) -> None:
    token = await api.token()

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert header["alg"] == "EdDSA"
    assert header["kid"] == app.state.token_issuer.kid
    assert set(claims) == {"iss", "aud", "sub", "exp", "iat", "jti"}


async def test_login_is_case_insensitive_on_email(api: UsersApi) -> None:
    await api.register("ada@example.com")

    assert (await api.login("ADA@Example.com")).status_code == 200


async def test_wrong_password_and_unknown_email_get_the_same_401(api: UsersApi) -> None:
    await api.register()

    wrong_password = await api.login(password="not the password")
    unknown_email = await api.login(email="nobody@example.com")

    assert wrong_password.status_code == unknown_email.status_code == 401
    assert wrong_password.headers["www-authenticate"] == "Bearer"
    assert wrong_password.json()["detail"] == unknown_email.json()["detail"]


async def test_jwks_publishes_the_public_signing_key_only(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    response = await client.get("/api/auth/jwks.json")

    assert response.status_code == 200
    (key,) = response.json()["keys"]
    assert key["kid"] == app.state.token_issuer.kid
    assert key["kty"] == "OKP"
    assert key["alg"] == "EdDSA"
    assert "d" not in key  # the private part


async def test_missing_token_is_401_with_bearer_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/users/me")

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    "make_token",
    [
        pytest.param(
            lambda app, uid: _sign(app, _claims(uid, exp=int(time.time()) - 60)), id="expired"
        ),
        pytest.param(
            lambda app, uid: _sign(app, _claims(uid, aud="elsewhere")), id="wrong-audience"
        ),
        pytest.param(
            lambda app, uid: _sign(app, _claims(uid, iss="someone-else")), id="wrong-issuer"
        ),
        pytest.param(
            lambda app, uid: _sign(app, {k: v for k, v in _claims(uid).items() if k != "jti"}),
            id="missing-jti",
        ),
        pytest.param(
            lambda app, uid: _sign(app, _claims(uid), key=Ed25519PrivateKey.generate()),
            id="signed-by-another-key",
        ),
        pytest.param(
            lambda app, uid: jwt.encode(
                _claims(uid),
                key=None,  # type: ignore[arg-type]  # an unsigned token is the point here
                algorithm="none",
                headers={"kid": app.state.token_issuer.kid},
            ),
            id="alg-none",
        ),
        pytest.param(
            lambda app, uid: jwt.encode(
                _claims(uid),
                "a-shared-secret-guess-long-enough-for-hs256",
                algorithm="HS256",
                headers={"kid": app.state.token_issuer.kid},
            ),
            id="hs256-confusion",
        ),
        pytest.param(lambda app, uid: "not.a.token", id="garbage"),
        pytest.param(lambda app, uid: _sign(app, _claims("not-a-uuid")), id="subject-not-a-uuid"),
    ],
)
async def test_invalid_tokens_are_rejected_with_401(
    app: FastAPI, api: UsersApi, client: httpx.AsyncClient, make_token: object
) -> None:
    user = await api.register()
    token = make_token(app, user["id"])  # type: ignore[operator]

    response = await client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_tampered_token_is_rejected(api: UsersApi, client: httpx.AsyncClient) -> None:
    token = await api.token()
    header, payload, signature = token.split(".")
    forged_payload = jwt.utils.base64url_encode(
        jwt.utils.base64url_decode(payload).replace(b'"aud":"mesh"', b'"aud":"mesh" ')
    ).decode()

    response = await client.get(
        "/api/users/me", headers={"Authorization": f"Bearer {header}.{forged_payload}.{signature}"}
    )

    assert response.status_code == 401


async def test_token_of_a_deleted_user_does_not_open_me(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    token = _sign(app, _claims(str(uuid.uuid4())))

    response = await client.get("/api/users/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 404


async def test_ten_failed_logins_per_email_then_429_with_retry_after(api: UsersApi) -> None:
    await api.register()
    for _ in range(10):
        assert (await api.login(password="wrong password")).status_code == 401

    limited = await api.login()  # even the right password waits out the window

    assert limited.status_code == 429
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["content-type"] == "application/problem+json"


async def test_failed_logins_are_limited_per_client_address_across_emails(api: UsersApi) -> None:
    for attempt in range(10):
        await api.login(email=f"guess{attempt}@example.com", password=PASSWORD)

    assert (await api.login(email="fresh@example.com")).status_code == 429


async def test_login_form_fields_are_validated(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth/token", data={"username": "a@example.com"})

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["errors"]] == [["body", "password"]]


@pytest.mark.parametrize(
    ("form", "field"),
    [
        ({"username": "a\x00@example.com", "password": "whatever1"}, "username"),
        ({"username": "a@example.com", "password": "what\x00ever"}, "password"),
    ],
)
async def test_login_fields_that_cannot_be_stored_or_hashed_are_422(
    client: httpx.AsyncClient, form: dict[str, str], field: str
) -> None:
    response = await client.post("/api/auth/token", data=form)

    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["errors"]] == [["body", field]]
