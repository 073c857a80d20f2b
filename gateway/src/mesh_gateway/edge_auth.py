"""The bearer token of a request at the edge (verified by `meshkit.auth.TokenVerifier`, which
remembers verified tokens until they expire)."""

from __future__ import annotations


def bearer_token(authorization: bytes | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
