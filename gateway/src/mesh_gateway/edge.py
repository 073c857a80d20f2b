"""The edge decision: may this request go on to its upstream?

One component for the HTTP and the WebSocket forwarder, in this order: authenticate (a valid
bearer token, except on the public routes of the HTTP API), rate-limit per client (the user id
of the token, else the client address), refuse a declared body over the limit, and fail fast
while the upstream's circuit is open. The answer is an `Admission` or a `Refusal`, which each
forwarder turns into what its protocol can say: a problem response, or a WebSocket close code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mesh_gateway.breaker import CircuitBreaker
from mesh_gateway.ratelimit import ClientRateLimiter
from mesh_gateway.routing import is_public
from meshkit.auth import InvalidTokenError, TokenVerifier
from meshkit.problems import ServiceUnavailableError

logger = logging.getLogger("mesh_gateway.edge")

# WebSocket close codes (RFC 6455 section 7.4.1).
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


@dataclass(frozen=True, slots=True)
class EdgeRequest:
    """What the edge looks at, read once from the request by its forwarder."""

    method: str
    path: str
    client: str
    token: str | None
    content_length: int | None = None  # declared; None without a body or when chunked
    websocket: bool = False


@dataclass(frozen=True, slots=True)
class Admission:
    # `RateLimit-*` headers for the answer (empty when rate limiting is off).
    rate_headers: Sequence[tuple[bytes, bytes]] = ()
    client: str = ""  # who is counted: the user id of the token, else the client address


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    detail: str
    headers: Mapping[str, str] = field(default_factory=dict)
    rate_headers: Sequence[tuple[bytes, bytes]] = ()
    close_code: int = TRY_AGAIN_LATER  # what a WebSocket is closed with instead
    close_reason: str = ""


def bearer_token(authorization: bytes | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.decode("latin-1").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Edge:
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        rate_limiter: ClientRateLimiter | None,
        body_limit: int,
    ) -> None:
        self._verifier = verifier
        self._rate_limiter = rate_limiter
        self.body_limit = body_limit
        # Also what a streamed body that grows past the limit is answered with.
        self.body_too_large = Refusal(
            413, f"The request body is larger than {body_limit} bytes.", {"Connection": "close"}
        )

    async def admit(
        self, request: EdgeRequest, *, upstream: str, breaker: CircuitBreaker
    ) -> Admission | Refusal:
        client_key = request.client
        if request.websocket or not is_public(request.method, request.path):
            authenticated = await self._authenticate(request.token)
            if isinstance(authenticated, Refusal):
                return authenticated
            client_key = authenticated

        rate_headers: Sequence[tuple[bytes, bytes]] = ()
        if self._rate_limiter is not None:
            decision = await self._rate_limiter.hit(client_key)
            rate_headers = decision.headers()
            if not decision.allowed:
                return Refusal(
                    429,
                    "Too many requests; slow down and retry after the time given.",
                    rate_headers=rate_headers,
                    close_reason="rate limited",
                )

        if request.content_length is not None and request.content_length > self.body_limit:
            return self.body_too_large

        wait = breaker.retry_after()
        if wait is not None:
            return Refusal(
                503,
                f"The {upstream} service is failing; requests to it are paused.",
                {"Retry-After": str(wait)},
                close_reason=f"{upstream} is failing",
            )
        return Admission(rate_headers, client_key)

    async def _authenticate(self, token: str | None) -> str | Refusal:
        """The user id a valid token names, as the client's rate-limit key."""
        if not token:
            return _unauthorized("An access token is required.")
        try:
            principal = await self._verifier.verify(token)
        except InvalidTokenError as exc:
            logger.info("rejected token: %s", exc)
            return _unauthorized("The access token is invalid or has expired.")
        except ServiceUnavailableError as exc:  # the keys cannot be fetched right now
            return Refusal(503, exc.detail, exc.headers, close_reason="try again later")
        # The token's own `sub` (the user id as text): no UUID to format per request.
        return str(principal.claims["sub"])


def _unauthorized(detail: str) -> Refusal:
    return Refusal(
        401,
        detail,
        {"WWW-Authenticate": "Bearer"},
        close_code=POLICY_VIOLATION,
        close_reason="invalid or missing access token",
    )
