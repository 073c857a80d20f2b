"""Bearer-token verification against the users service's JWKS (fetched, cached, refreshed).

Every service verifies tokens itself (issuer, audience, expiry, signature), so a service reached
without the gateway is still protected.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import httpx
import jwt
from fastapi import Depends, Request
from fastapi.security import OAuth2PasswordBearer
from jwt import PyJWK, PyJWKSet

from meshkit.http_client import ServiceClient
from meshkit.problems import ServiceUnavailableError, UnauthorizedError

logger = logging.getLogger("meshkit.auth")

ALLOWED_ALGORITHMS = ("EdDSA", "RS256")
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub", "jti")
TOKEN_URL = "/api/auth/token"  # noqa: S105 - a path, not a secret

oauth2_scheme = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)


class InvalidTokenError(Exception):
    """The token is missing, malformed, expired, or not signed by a key we trust."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    user_id: uuid.UUID
    token_id: str
    claims: Mapping[str, Any]


class KeySource(Protocol):
    async def key(self, kid: str) -> PyJWK | None: ...


class StaticKeySource:
    """Keys known in-process (the users service verifies with its own public keys)."""

    def __init__(self, jwks: Mapping[str, Any]) -> None:
        self._keys = {k.key_id: k for k in PyJWKSet.from_dict(dict(jwks)).keys if k.key_id}

    async def key(self, kid: str) -> PyJWK | None:
        return self._keys.get(kid)


class JwksKeySource:
    """A JWKS fetched over HTTP, cached for `ttl` seconds and refetched when an unknown `kid`
    appears (key rotation), at most once every `min_refresh_interval` seconds."""

    def __init__(
        self,
        url: str,
        client: ServiceClient,
        *,
        ttl: float = 300.0,
        min_refresh_interval: float = 5.0,
    ) -> None:
        self._url = url
        self._client = client
        self._ttl = ttl
        self._min_refresh_interval = min_refresh_interval
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> PyJWK | None:
        now = time.monotonic()
        stale = now - self._fetched_at > self._ttl
        unknown = kid not in self._keys and now - self._fetched_at > self._min_refresh_interval
        if stale or unknown:
            await self._refresh()
        return self._keys.get(kid)

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._fetched_at <= self._min_refresh_interval:
                return  # another request refreshed while we waited
            try:
                response = await self._client.get(self._url)
                response.raise_for_status()
                jwks = PyJWKSet.from_dict(response.json())
            except (httpx.HTTPError, ValueError, jwt.PyJWTError) as exc:
                logger.warning("could not fetch JWKS from %s: %s", self._url, exc)
                if not self._keys:
                    raise ServiceUnavailableError(
                        "Token keys are not available yet; try again shortly.",
                        headers={"Retry-After": "1"},
                    ) from exc
                return  # keep serving with the keys we have
            self._keys = {k.key_id: k for k in jwks.keys if k.key_id}
            self._fetched_at = time.monotonic()


class TokenVerifier:
    """Checks issuer, audience, expiry and signature; a verified token is remembered until its
    `exp` (at most `remember` tokens), because a client sends the same token many times and the
    signature check is the costliest step of an authenticated request. A remembered token is
    refused the moment its `exp` passes."""

    def __init__(
        self,
        keys: KeySource,
        *,
        issuer: str,
        audience: str,
        leeway: float = 5.0,
        remember: int = 10_000,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._remember = remember
        self._verified: dict[str, tuple[Principal, float]] = {}

    async def verify(self, token: str) -> Principal:
        remembered = self._verified.get(token)
        if remembered is not None:
            principal, expires_at = remembered
            if time.time() < expires_at:
                return principal
            del self._verified[token]
            raise InvalidTokenError("token expired")
        principal = await self._verify_signed(token)
        if len(self._verified) >= self._remember:
            self._verified.clear()  # cheap and bounded; the next requests verify again
        self._verified[token] = (principal, float(principal.claims["exp"]))
        return principal

    async def _verify_signed(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise InvalidTokenError("malformed token") from exc
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or alg not in ALLOWED_ALGORITHMS:
            raise InvalidTokenError("token header names no trusted key or algorithm")
        key = await self._keys.key(kid)
        if key is None or key.algorithm_name != alg:
            raise InvalidTokenError("token signed by an unknown key")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": list(REQUIRED_CLAIMS)},
            )
            user_id = uuid.UUID(str(claims["sub"]))
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidTokenError(str(exc)) from exc
        return Principal(user_id=user_id, token_id=str(claims["jti"]), claims=claims)


async def get_token_verifier(request: Request) -> TokenVerifier:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a hand-off per request.
    verifier = getattr(request.app.state, "token_verifier", None)
    if not isinstance(verifier, TokenVerifier):
        raise RuntimeError("this service has no token verifier configured")
    return verifier


async def require_principal(
    token: Annotated[str | None, Depends(oauth2_scheme)],
    verifier: Annotated[TokenVerifier, Depends(get_token_verifier)],
) -> Principal:
    if not token:
        raise UnauthorizedError("An access token is required.")
    try:
        return await verifier.verify(token)
    except InvalidTokenError as exc:
        logger.info("rejected token: %s", exc)
        raise UnauthorizedError("The access token is invalid or has expired.") from exc


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]
