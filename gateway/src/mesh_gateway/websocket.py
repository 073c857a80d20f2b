"""WebSocket pass-through: the edge decides on the upgrade, then the same socket is opened
upstream, frames are relayed both ways and close codes propagated — the transport only.

Browsers cannot set headers on a WebSocket upgrade, so the token comes as `?access_token=`
(contract; meshkit redacts it from logs). The upstream side uses `websockets` (httpx's
pluggable transports cannot upgrade with the aiohttp transport). docs/gateway.md has the codes.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from urllib.parse import parse_qs

from opentelemetry import propagate
from starlette.types import Message, Receive, Scope, Send
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from mesh_gateway.edge import POLICY_VIOLATION, TRY_AGAIN_LATER, Edge, EdgeRequest, Refusal
from mesh_gateway.proxy import Upstream, client_address, request_target
from mesh_gateway.streams import StreamGate
from meshkit.concurrency import first_completed
from meshkit.logging import request_id_var
from meshkit.resources import count_refusal

logger = logging.getLogger("mesh_gateway.websocket")

INTERNAL_ERROR = 1011
# Codes that describe a missing close frame and may not be sent in one (RFC 6455 section 7.4.1).
_NOT_SENDABLE = frozenset({1005, 1006, 1015})
_FORWARDED_HEADERS = frozenset({b"traceparent", b"tracestate", b"user-agent", b"origin"})


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSocketForwarder:
    edge: Edge
    streams: StreamGate
    open_timeout: float
    messages_per_second: int

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, upstream: Upstream
    ) -> None:
        connect_message = await receive()
        if connect_message["type"] != "websocket.connect":
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        admitted = await self.edge.admit(
            EdgeRequest(
                method="GET",
                path=scope["path"],
                client=client_address(scope),
                token=(query.get("access_token") or [""])[0],
                websocket=True,
            ),
            upstream=upstream.name,
            breaker=upstream.breaker,
        )
        if isinstance(admitted, Refusal):
            await self._refuse(send, admitted)
            return
        opened = await self.streams.open(admitted.client, "websocket")
        if isinstance(opened, Refusal):
            await self._refuse(send, opened)
            return
        try:
            await self._forward(scope, receive, send, upstream)
        finally:
            await self.streams.close(opened)

    async def _forward(
        self, scope: Scope, receive: Receive, send: Send, upstream: Upstream
    ) -> None:
        try:
            upstream_socket = await connect(
                self._upstream_url(upstream, scope),
                additional_headers=self._headers(scope),
                subprotocols=scope.get("subprotocols") or None,
                open_timeout=self.open_timeout,
                proxy=None,
                compression=None,
                user_agent_header=None,
            )
        except InvalidStatus as exc:
            # The upstream refused the upgrade itself (e.g. its own token check): say so.
            upstream.breaker.record_success()
            status = exc.response.status_code
            code = POLICY_VIOLATION if status in (401, 403) else INTERNAL_ERROR
            await self._accept_and_close(send, code, f"upstream refused ({status})")
            return
        except (OSError, TimeoutError, WebSocketException) as exc:
            upstream.breaker.record_failure()
            logger.warning("websocket upstream %s unavailable: %s", upstream.name, exc)
            await self._accept_and_close(send, TRY_AGAIN_LATER, f"{upstream.name} unavailable")
            return
        upstream.breaker.record_success()
        async with upstream_socket:
            await send({"type": "websocket.accept", "subprotocol": upstream_socket.subprotocol})
            await self._relay(receive, send, upstream_socket)

    async def _relay(self, receive: Receive, send: Send, upstream: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        limit = self.messages_per_second

        async def client_to_upstream() -> None:
            window_started, in_window = loop.time(), 0
            while True:
                message: Message = await receive()
                if message["type"] == "websocket.disconnect":
                    code = message.get("code", 1000)
                    await upstream.close(code if code not in _NOT_SENDABLE else 1000)
                    return
                now = loop.time()
                if now - window_started >= 1.0:
                    window_started, in_window = now, 0
                in_window += 1
                if in_window > limit:
                    count_refusal("websocket_message_rate")
                    reason = f"more than {limit} messages per second"
                    await send(
                        {"type": "websocket.close", "code": POLICY_VIOLATION, "reason": reason}
                    )
                    await upstream.close(1000)
                    return
                if message.get("text") is not None:
                    await upstream.send(message["text"])
                elif message.get("bytes") is not None:
                    await upstream.send(message["bytes"])

        async def upstream_to_client() -> None:
            try:
                async for frame in upstream:
                    if isinstance(frame, str):
                        await send({"type": "websocket.send", "text": frame})
                    else:
                        await send({"type": "websocket.send", "bytes": frame})
            except ConnectionClosed:
                pass
            code = upstream.close_code or INTERNAL_ERROR
            reason = upstream.close_reason or ""
            if code in _NOT_SENDABLE:
                code, reason = (1000, "") if code == 1005 else (INTERNAL_ERROR, "upstream lost")
            await send({"type": "websocket.close", "code": code, "reason": reason})

        try:
            await first_completed(client_to_upstream(), upstream_to_client())
        except* ConnectionClosed:
            pass
        except* Exception as errors:
            for exc in errors.exceptions:
                logger.warning("websocket relay ended with %r", exc)

    async def _refuse(self, send: Send, refusal: Refusal) -> None:
        logger.info("websocket refused: %s", refusal.detail)
        await self._accept_and_close(
            send, refusal.close_code, refusal.close_reason or refusal.detail
        )

    @staticmethod
    async def _accept_and_close(send: Send, code: int, reason: str) -> None:
        # Accept first: a close before the handshake becomes an HTTP 403 and the client would
        # never see the close code the contract promises.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})

    @staticmethod
    def _upstream_url(upstream: Upstream, scope: Scope) -> str:
        base = upstream.client.base_url.replace("http://", "ws://", 1)
        return base.replace("https://", "wss://", 1) + request_target(scope)

    @staticmethod
    def _headers(scope: Scope) -> list[tuple[str, str]]:
        # The current (gateway) span's context replaces the caller's trace headers; with
        # tracing off, the caller's pass through unchanged.
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        forwarded = (
            _FORWARDED_HEADERS - {b"traceparent", b"tracestate"} if carrier else _FORWARDED_HEADERS
        )
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in scope["headers"]
            if name in forwarded
        ]
        headers.extend(carrier.items())
        client = scope.get("client")
        if client:
            headers.append(("X-Forwarded-For", client[0]))
        request_id = request_id_var.get()
        if request_id:
            headers.append(("X-Request-ID", request_id))
        return headers
