"""Token verification at the edge, with verified tokens remembered until they expire.

The signature check is the costliest step of a proxied request; a client sends the same token
many times, and a cached token is still refused the moment its `exp` passes.
"""

from __future__ import annotations

import time

from meshkit.auth import InvalidTokenError, Principal, TokenVerifier


class EdgeAuthenticator:
    def __init__(self, verifier: TokenVerifier, *, max_cached: int = 10_000) -> None:
        self._verifier = verifier
        self._max_cached = max_cached
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def principal(self, token: str) -> Principal:
        """The verified caller; raises `InvalidTokenError` for a bad or expired token."""
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires_at = cached
            if time.time() < expires_at:
                return principal
            del self._verified[token]
            raise InvalidTokenError("token expired")
        principal = await self._verifier.verify(token)
        if len(self._verified) >= self._max_cached:
            self._verified.clear()  # cheap and bounded; the next requests re-verify
        self._verified[token] = (principal, float(principal.claims["exp"]))
        return principal


def bearer_token(authorization: bytes | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
