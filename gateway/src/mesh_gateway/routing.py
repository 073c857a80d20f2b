"""Which upstream serves a path, and which routes are public (contract: ../shared/CONTRACT.md)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# Each service serves its public paths under the same prefix the gateway shows, so the gateway
# forwards without rewriting; `/internal/` paths are in no prefix and so never reachable.
PREFIXES: dict[str, tuple[str, ...]] = {
    "users": ("/api/users", "/api/auth"),
    "orders": ("/api/orders",),
    "notifications": ("/api/notifications",),
}

# Reachable without a token: registering, logging in, the public keys.
PUBLIC_ROUTES: frozenset[tuple[str, str]] = frozenset(
    {
        ("POST", "/api/users"),
        ("POST", "/api/auth/token"),
        ("GET", "/api/auth/jwks.json"),
        ("HEAD", "/api/auth/jwks.json"),
    }
)

# Long-lived answers: sent through each upstream's stream pool and counted against the stream
# caps before they are sent (any request asking for `text/event-stream` is treated alike).
STREAM_PATHS: frozenset[str] = frozenset({"/api/notifications/stream"})


@dataclass(frozen=True, slots=True)
class Route:
    prefix: str
    upstream: str


class RouteTable:
    """Longest prefix first; a prefix matches itself and anything below it, never `/api/usersX`."""

    def __init__(self, upstreams: Iterable[str]) -> None:
        routes = [Route(prefix, name) for name in upstreams for prefix in PREFIXES.get(name, ())]
        self._routes = sorted(routes, key=lambda route: len(route.prefix), reverse=True)

    def match(self, path: str) -> Route | None:
        # Upstream clients normalise dot segments (`/api/users/../../internal/x` becomes
        # `/internal/x`), so such a path would escape its prefix: it is routed nowhere. The path
        # is percent-decoded: `%2e%2e` and `..%2f` are caught too.
        if any(segment in (".", "..") for segment in path.split("/")):
            return None
        for route in self._routes:
            prefix = route.prefix
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return route
        return None

    def prefixes_of(self, upstream: str) -> tuple[str, ...]:
        return tuple(route.prefix for route in self._routes if route.upstream == upstream)


def is_public(method: str, path: str) -> bool:
    return (method, path.rstrip("/") or "/") in PUBLIC_ROUTES


def is_stream(path: str, accept: bytes | None) -> bool:
    """Will this request's answer be a long-lived event stream?"""
    return (path.rstrip("/") in STREAM_PATHS) or (
        accept is not None and b"text/event-stream" in accept
    )
