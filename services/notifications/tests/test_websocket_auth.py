"""WebSocket authentication, with the token keys faked at the edge (no server needed)."""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from jwt import PyJWK

from meshkit.auth import TokenVerifier
from meshkit.problems import ServiceUnavailableError
from notifications_service.push import PushHub
from notifications_service.routes import routers


class UnreachableKeys:
    """The users service's JWKS cannot be fetched."""

    async def key(self, kid: str) -> PyJWK | None:
        raise ServiceUnavailableError("Token keys are not available yet; try again shortly.")


def _app() -> FastAPI:
    app = FastAPI()
    for router in routers:
        app.include_router(router)
    app.state.token_verifier = TokenVerifier(
        UnreachableKeys(), issuer="mesh-users", audience="mesh"
    )
    app.state.push_hub = PushHub()
    return app


async def _close_code(token: str) -> int:
    """Drives the ASGI app as a server would for one WebSocket handshake."""
    sent: list[MutableMapping[str, Any]] = []
    incoming = [{"type": "websocket.connect"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": "/api/notifications/ws",
        "raw_path": b"/api/notifications/ws",
        "query_string": f"access_token={token}".encode(),
        "headers": [],
        "scheme": "ws",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
        "subprotocols": [],
    }
    await _app()(scope, receive, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.close"]
    code: int = sent[1]["code"]
    return code


async def test_a_token_that_cannot_be_checked_now_closes_with_1013() -> None:
    token = jwt.encode(
        {"sub": "x"}, Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "k1"}
    )

    assert await _close_code(token) == 1013


async def test_a_malformed_token_closes_with_1008() -> None:
    assert await _close_code("not-a-jwt") == 1008
