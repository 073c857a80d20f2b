"""Verified tokens are remembered, but never past their expiry."""

from __future__ import annotations

import time
import uuid

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from jwt import PyJWK

from mesh_gateway.edge_auth import EdgeAuthenticator, bearer_token
from meshkit.auth import InvalidTokenError, TokenVerifier

KEY = Ed25519PrivateKey.generate()


class OneKey:
    def __init__(self) -> None:
        self.lookups = 0
        self._jwk = PyJWK.from_dict(
            {**jwt.algorithms.OKPAlgorithm.to_jwk(KEY.public_key(), as_dict=True), "kid": "k1"},
            algorithm="EdDSA",
        )

    async def key(self, kid: str) -> PyJWK | None:
        self.lookups += 1
        return self._jwk if kid == "k1" else None


def _token(expires_in: int) -> str:
    now = int(time.time())
    claims = {
        "sub": str(uuid.uuid4()),
        "iss": "mesh-users",
        "aud": "mesh",
        "iat": now,
        "exp": now + expires_in,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, KEY, algorithm="EdDSA", headers={"kid": "k1"})


async def test_a_verified_token_is_not_verified_again() -> None:
    keys = OneKey()
    authenticator = EdgeAuthenticator(TokenVerifier(keys, issuer="mesh-users", audience="mesh"))
    token = _token(300)

    first = await authenticator.principal(token)
    second = await authenticator.principal(token)

    assert first == second
    assert keys.lookups == 1


async def test_a_remembered_token_is_refused_once_expired() -> None:
    # Expired two seconds ago: the verifier's 5 s leeway still accepts it once, the cache not.
    authenticator = EdgeAuthenticator(TokenVerifier(OneKey(), issuer="mesh-users", audience="mesh"))
    token = _token(-2)
    await authenticator.principal(token)

    with pytest.raises(InvalidTokenError):
        await authenticator.principal(token)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        (b"", None),
        (b"Bearer ", None),
        (b"Basic abc", None),
        (b"Bearer abc", "abc"),
        (b"bearer  abc ", "abc"),
    ],
)
def test_bearer_token_parsing(header: bytes | None, token: str | None) -> None:
    assert bearer_token(header) == token
