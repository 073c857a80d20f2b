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
from jwt import PyJWK
from jwt.algorithms import OKPAlgorithm

from meshkit.auth import InvalidTokenError, JwksKeySource, TokenVerifier
from meshkit.http_client import ServiceClient
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
    client = ServiceClient(
        httpx.MockTransport(server.handler), base_url="", timeout=httpx.Timeout(1.0)
    )
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


class CountingKeys:
    """A key source that counts lookups: one lookup per signature actually checked."""

    def __init__(self, server: KeyServer) -> None:
        self.lookups = 0
        self._keys = {
            kid: PyJWK.from_dict(
                {**json.loads(OKPAlgorithm.to_jwk(key.public_key())), "kid": kid},
                algorithm="EdDSA",
            )
            for kid, key in server.keys.items()
        }

    async def key(self, kid: str) -> PyJWK | None:
        self.lookups += 1
        return self._keys.get(kid)


async def test_a_verified_token_is_remembered_not_verified_again(server: KeyServer) -> None:
    kid = server.add_key()
    keys = CountingKeys(server)
    verifier = TokenVerifier(keys, issuer="mesh-users", audience="mesh")
    token = server.token(kid)

    first = await verifier.verify(token)
    second = await verifier.verify(token)

    assert first == second
    assert keys.lookups == 1


async def test_a_remembered_token_is_refused_once_expired(server: KeyServer) -> None:
    # Expired two seconds ago: the 5 s leeway accepts it once; remembering it does not.
    kid = server.add_key()
    verifier = TokenVerifier(CountingKeys(server), issuer="mesh-users", audience="mesh")
    token = server.token(kid, exp=int(time.time()) - 2)
    await verifier.verify(token)

    with pytest.raises(InvalidTokenError):
        await verifier.verify(token)


async def test_remembered_tokens_are_bounded(server: KeyServer) -> None:
    kid = server.add_key()
    keys = CountingKeys(server)
    verifier = TokenVerifier(keys, issuer="mesh-users", audience="mesh", remember=2)
    tokens = [server.token(kid) for _ in range(3)]
    for token in tokens:
        await verifier.verify(token)

    await verifier.verify(tokens[0])  # forgotten when the third one did not fit

    assert keys.lookups == 4
