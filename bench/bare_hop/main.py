"""A bare Python proxy hop, for benchmark scenario 1b: the gateway's server stack (gunicorn,
the uvicorn worker, the same configuration) and its HTTP client library (aiohttp), and nothing
else — no routing table, authentication, rate limit, breaker, retries, telemetry or problem
bodies. Measured beside the gateway in front of the same backend, it says what any Python hop
costs on the machine of the run, which target 4's absolute limit cannot.

Served as `gunicorn --config python:meshkit.gunicorn_conf 'bare_hop.main:create_app()'` from
`bench/`, forwarding every request but its own probes to `BARE_HOP_UPSTREAM`.
"""

from __future__ import annotations

import os

import aiohttp
from starlette.types import Receive, Scope, Send

# Hop-by-hop headers (RFC 9110 §7.6.1); a request's `Host` and length are the client's to set.
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
     b"transfer-encoding", b"upgrade"}
)  # fmt: skip
_NOT_FORWARDED = _HOP_BY_HOP | {b"host", b"content-length"}
_NOT_RETURNED = _HOP_BY_HOP | {b"date", b"server"}  # uvicorn sets its own
_PROBES = frozenset({"/healthz", "/readyz"})


class BareHop:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] in _PROBES:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=256), auto_decompress=False
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._session is not None
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope["query_string"].decode("latin-1")
        url = self._upstream + scope["path"] + (f"?{query}" if query else "")
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name not in _NOT_FORWARDED
        ]
        async with self._session.request(
            scope["method"], url, headers=headers, data=body or None
        ) as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": [
                        (name.lower(), value)
                        for name, value in response.raw_headers
                        if name.lower() not in _NOT_RETURNED
                    ],
                }
            )
            async for chunk in response.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def create_app() -> BareHop:
    return BareHop(os.environ.get("BARE_HOP_UPSTREAM", "http://127.0.0.1:8001"))
