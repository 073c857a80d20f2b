"""Token verification against a JWKS that is fetched, cached and refreshed on key rotation."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt.algorithms import OKPAlgorithm

from meshkit.auth import InvalidTokenError, JwksKeySource, TokenVerifier
from meshkit.problems import ServiceUnavailableError


class KeyServer:
    """The users service's JWKS endpoint, as seen by a client: the edge of this unit."""

    def __init__(self) -> None:
        self.keys: dict[str, Ed25519PrivateKey] = {}
        self.fetches = 0
        self.down = False

    def add_key(self) -> str:
        kid = uuid.uuid4().hex
        self.keys[kid] = Ed25519PrivateKey.generate()
        return kid

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        jwks: list[dict[str, Any]] = [
            {**json.loads(OKPAlgorithm.to_jwk(key.public_key())), "kid": kid, "alg": "EdDSA"}
            for kid, key in self.keys.items()
        ]
        return httpx.Response(200, json={"keys": jwks})

    def token(self, kid: str, **claims: object) -> str:
        now = int(time.time())
        payload = {
            "iss": "mesh-users",
            "aud": "mesh",
            "sub": str(uuid.uuid4()),
            "iat": now,
            "exp": now + 60,
            "jti": uuid.uuid4().hex,
            **claims,
        }
        return jwt.encode(payload, self.keys[kid], algorithm="EdDSA", headers={"kid": kid})


@pytest.fixture
def server() -> KeyServer:
    return KeyServer()


def _verifier(server: KeyServer, *, min_refresh_interval: float = 0.0) -> TokenVerifier:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    source = JwksKeySource(
        "http://users/api/auth/jwks.json", client, min_refresh_interval=min_refresh_interval
    )
    return TokenVerifier(source, issuer="mesh-users", audience="mesh")


async def test_keys_are_fetched_once_and_cached(server: KeyServer) -> None:
    kid = server.add_key()
    verifier = _verifier(server, min_refresh_interval=60)

    for _ in range(3):
        await verifier.verify(server.token(kid))

    assert server.fetches == 1


async def test_a_rotated_key_is_picked_up_on_its_first_token(server: KeyServer) -> None:
    verifier = _verifier(server)
    await verifier.verify(server.token(server.add_key()))

    rotated = server.add_key()
    principal = await verifier.verify(
        server.token(rotated, sub="6c8f5a4e-3f1c-4d5e-9a7b-1c2d3e4f5a6b")
    )

    assert str(principal.user_id) == "6c8f5a4e-3f1c-4d5e-9a7b-1c2d3e4f5a6b"
    assert server.fetches == 2


async def test_unknown_kids_cannot_force_a_fetch_storm(server: KeyServer) -> None:
    kid = server.add_key()
    verifier = _verifier(server, min_refresh_interval=60)
    await verifier.verify(server.token(kid))
    stranger = KeyServer()
    stranger_kid = stranger.add_key()

    for _ in range(5):
        with pytest.raises(InvalidTokenError):
            await verifier.verify(stranger.token(stranger_kid))

    assert server.fetches == 1


async def test_unreachable_jwks_without_cached_keys_is_503(server: KeyServer) -> None:
    kid = server.add_key()
    server.down = True

    with pytest.raises(ServiceUnavailableError):
        await _verifier(server).verify(server.token(kid))


async def test_cached_keys_keep_working_while_jwks_is_unreachable(server: KeyServer) -> None:
    kid = server.add_key()
    verifier = _verifier(server)
    await verifier.verify(server.token(kid))
    server.down = True

    await verifier.verify(server.token(kid))
    with pytest.raises(InvalidTokenError):
        await verifier.verify(server.token(kid, aud="another-audience"))
