"""Password hashing (argon2) and access tokens (EdDSA-signed JWTs) with their JWKS."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jwt.algorithms import OKPAlgorithm
from pwdlib import PasswordHash

logger = logging.getLogger("users.security")

_hasher = PasswordHash.recommended()
# Verified against when the email is unknown, so both failures cost the same time.
_DUMMY_HASH = _hasher.hash("not-a-real-password-only-for-timing")


async def hash_password(password: str) -> str:
    # argon2 takes tens of milliseconds of CPU: keep it off the event loop.
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    matches = await asyncio.to_thread(_hasher.verify, password, password_hash or _DUMMY_HASH)
    return matches and password_hash is not None


def _public_jwk(public_key: Ed25519PublicKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(OKPAlgorithm.to_jwk(public_key))
    # RFC 7638 thumbprint as the key id: stable for a key, different for every other key.
    thumbprint_input = json.dumps(
        {"crv": jwk["crv"], "kty": jwk["kty"], "x": jwk["x"]}, separators=(",", ":"), sort_keys=True
    )
    digest = jwt.utils.base64url_encode(hashlib.sha256(thumbprint_input.encode()).digest()).decode()
    return {**jwk, "kid": digest, "alg": "EdDSA", "use": "sig"}


def load_private_key(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    data = path.read_bytes()
    if b"PRIVATE KEY" in data:
        return load_private_key(path).public_key()
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class IssuedToken:
    token: str
    expires_in: int


class TokenIssuer:
    def __init__(
        self,
        private_key: Ed25519PrivateKey,
        *,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        retired_public_keys: Sequence[Ed25519PublicKey] = (),
    ) -> None:
        self._private_key = private_key
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds
        current = _public_jwk(private_key.public_key())
        self.kid: str = current["kid"]
        self.jwks: dict[str, Any] = {
            "keys": [current, *(_public_jwk(key) for key in retired_public_keys)]
        }

    def issue(self, user_id: uuid.UUID) -> IssuedToken:
        now = int(time.time())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "iat": now,
            "exp": now + self._ttl,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._private_key, algorithm="EdDSA", headers={"kid": self.kid})
        return IssuedToken(token=token, expires_in=self._ttl)
