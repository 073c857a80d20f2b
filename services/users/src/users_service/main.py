"""The users service's ASGI app.

Served by `gunicorn --config python:meshkit.gunicorn_conf 'users_service.main:create_app()'`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from meshkit.app import create_service_app
from meshkit.auth import StaticKeySource, TokenVerifier
from meshkit.messaging import publisher_lifespan
from meshkit.ratelimit import SharedRateLimiter
from users_service.login_limits import LoginLimiter
from users_service.models import outbox
from users_service.routes import routers
from users_service.security import TokenIssuer, load_private_key, load_public_key
from users_service.settings import UsersSettings

logger = logging.getLogger("users")


def build_token_issuer(settings: UsersSettings) -> TokenIssuer:
    if settings.jwt_private_key_file is not None:
        private_key = load_private_key(settings.jwt_private_key_file)
    else:
        # Only reachable in local/test environments (settings refuse it elsewhere). Every
        # process gets its own key, so run several workers only with a key file.
        logger.warning("JWT_PRIVATE_KEY_FILE is not set: signing with a throw-away key")
        private_key = Ed25519PrivateKey.generate()
    return TokenIssuer(
        private_key,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        ttl_seconds=settings.access_token_ttl_seconds,
        retired_public_keys=[load_public_key(p) for p in settings.jwt_retired_public_key_files],
    )


def create_app(settings: UsersSettings | None = None) -> FastAPI:
    settings = settings or UsersSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        issuer = build_token_issuer(settings)
        app.state.token_issuer = issuer
        # The users service trusts its own keys directly; other services fetch the JWKS.
        app.state.token_verifier = TokenVerifier(
            StaticKeySource(issuer.jwks), issuer=settings.jwt_issuer, audience=settings.jwt_audience
        )
        counters = SharedRateLimiter(settings, name="login", strategy=LoginLimiter.STRATEGY)
        app.state.login_limiter = LoginLimiter(
            limit=settings.login_failure_limit, counters=counters
        )
        try:
            async with publisher_lifespan(app, settings, outbox):
                yield
        finally:
            counters.close()

    return create_service_app(
        settings,
        title="Users service",
        description="Accounts, OAuth2 password login and the JWKS that verifies access tokens.",
        routers=routers,
        lifespan=lifespan,
    )
