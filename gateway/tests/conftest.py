"""Fixtures: the real users service (production command), a stand-in for orders and
notifications on a loopback port (a real ASGI app with endpoints that misbehave on purpose:
slow, huge, streaming, WebSocket echo), and gateways built with the settings each test needs."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import StreamingResponse
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from mesh_gateway.main import create_app
from mesh_gateway.settings import GatewaySettings
from meshdev.api import UsersApi
from meshdev.postgres import create_database, drop_database, sqlalchemy_url
from meshdev.processes import ServiceProcess, free_port
from meshdev.rabbitmq import amqp_url, create_vhost, delete_vhost
from meshdev.servers import serve
from meshdev.stack import write_signing_key
from meshkit.migrations import upgrade_to_head
from users_service.migrate import MIGRATIONS

CHUNK = b"x" * 65_536


class UpstreamControl:
    """What the test can see and steer in the stand-in service."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.next_event = asyncio.Event()
        self.open_streams = 0
        self.client_close_codes: list[int] = []
        self.held = 0  # requests waiting in `/api/orders/held`
        self.release_held = asyncio.Event()


def create_upstream_app(control: UpstreamControl) -> FastAPI:
    app = FastAPI(title="Stand-in service")

    class CountHits:
        """Pure ASGI (BaseHTTPMiddleware would end a crashed stream as if it were complete)."""

        def __init__(self, inner: ASGIApp) -> None:
            self.inner = inner

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            path = scope.get("path", "")
            if scope["type"] == "http" and path.startswith(("/api/", "/internal/")):
                control.hits.append(f"{scope['method']} {path}")  # not the gateway's probes
            await self.inner(scope, receive, send)

    app.add_middleware(CountHits)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    async def echo(request: Request) -> dict[str, Any]:
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
        except ClientDisconnect:
            size = -1  # the gateway gave up on this body (413)
        return {
            "method": request.method,
            "path": request.url.path,
            "query": request.url.query,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_size": size,
        }

    @app.get("/api/orders/echo")
    async def echo_get(request: Request) -> dict[str, Any]:
        """Tells what arrived: method, path, query, headers."""
        return await echo(request)

    @app.post("/api/orders/echo")
    async def echo_post(request: Request) -> dict[str, Any]:
        """Tells what arrived, with the body's size."""
        return await echo(request)

    @app.get("/api/orders/slow")
    async def slow(seconds: float) -> dict[str, float]:
        """Answers after `seconds`."""
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.post("/api/orders/slow")
    async def slow_post(seconds: float, request: Request) -> dict[str, float]:
        """Reads the body, then answers after `seconds`."""
        await request.body()
        await asyncio.sleep(seconds)
        return {"slept": seconds}

    @app.get("/api/orders/held")
    async def held() -> dict[str, bool]:
        """Answers once the test sets `release_held` (holds a connection of the gateway's pool)."""
        control.held += 1
        try:
            await control.release_held.wait()
        finally:
            control.held -= 1
        return {"held": True}

    @app.get("/api/orders/events")
    async def undeclared_events() -> StreamingResponse:
        """An event stream on a path the gateway does not know as one."""

        async def events() -> AsyncIterator[bytes]:
            yield b": live\n\n"
            await asyncio.Event().wait()  # until the client leaves

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/api/orders/big")
    async def big(mib: int) -> StreamingResponse:
        """Streams `mib` MiB."""

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(mib * 16):
                yield CHUNK

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/api/orders/broken")
    async def broken() -> StreamingResponse:
        """Starts a response, then dies in the middle of it."""

        async def chunks() -> AsyncIterator[bytes]:
            yield CHUNK
            raise ConnectionAbortedError("the stand-in crashed mid-response")

        return StreamingResponse(chunks(), media_type="application/octet-stream")

    @app.get("/internal/secret", include_in_schema=False)
    async def secret() -> dict[str, str]:
        return {"secret": "never through the gateway"}

    @app.get("/api/notifications")
    async def notifications() -> dict[str, Any]:
        """An empty list, as the notifications service answers it."""
        return {"items": [], "next_cursor": None}

    @app.get("/api/notifications/stream")
    async def stream() -> StreamingResponse:
        """One event at once, then one more each time the test sets `next_event`."""

        async def events() -> AsyncIterator[bytes]:
            control.open_streams += 1
            try:
                number = 0
                while True:
                    number += 1
                    yield f'event: notification\nid: {number}\ndata: {{"n": {number}}}\n\n'.encode()
                    await control.next_event.wait()
                    control.next_event.clear()
            finally:
                control.open_streams -= 1

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.websocket("/api/notifications/ws")
    async def websocket(socket: WebSocket) -> None:
        await socket.accept()
        while True:
            try:
                text = await socket.receive_text()
            except WebSocketDisconnect as closed:
                control.client_close_codes.append(closed.code)
                return
            if text.startswith("close:"):
                await socket.close(code=int(text.removeprefix("close:")), reason="asked to")
                return
            await socket.send_text(text)

    return app


ARTIFACTS = Path(__file__).resolve().parents[2] / ".test-artifacts" / "gateway"

GatewayFactory = Callable[..., AbstractAsyncContextManager[str]]


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
async def users_url(
    tmp_path_factory: pytest.TempPathFactory, artifacts: Path
) -> AsyncIterator[str]:
    """The real users service, started with the production command on a free port."""
    database = await create_database("gateway_users_test")
    # Users publishes user.registered: its exchanges live in a vhost of their own.
    vhost = await create_vhost("gateway_users_test")
    key_file = write_signing_key(tmp_path_factory.mktemp("keys"))
    process = ServiceProcess(
        "users_service",
        env={
            "ENVIRONMENT": "test",
            "DATABASE_URL": sqlalchemy_url(database),
            "RABBITMQ_URL": amqp_url(vhost),
            "JWT_PRIVATE_KEY_FILE": str(key_file),
            "OTEL_SERVICE_NAME": "users",
            "OTEL_SDK_DISABLED": "true",
        },
        log_path=artifacts / "users.log",
    )
    try:
        await asyncio.to_thread(upgrade_to_head, MIGRATIONS, sqlalchemy_url(database))
        process.start()
        await asyncio.to_thread(process.wait_ready)
        yield process.url
    finally:
        process.stop()
        await drop_database(database)
        await delete_vhost(vhost)


@pytest.fixture(scope="session")
def upstream_control() -> UpstreamControl:
    return UpstreamControl()


@pytest.fixture(scope="session")
async def stand_in_url(upstream_control: UpstreamControl) -> AsyncIterator[str]:
    """Plays orders and notifications (both prefixes are served by one stand-in)."""
    async with serve(create_upstream_app(upstream_control)) as url:
        yield url


@pytest.fixture(scope="session")
def gateway_settings(users_url: str, stand_in_url: str) -> Callable[..., GatewaySettings]:
    def build(**overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            "environment": "test",
            "users_url": users_url,
            "orders_url": stand_in_url,
            "notifications_url": stand_in_url,
            "rate_limit_enabled": False,
            "body_limit_bytes": 256 * 1024,
            "upstream_read_timeout": 1.0,
            "breaker_failure_threshold": 3,
            "breaker_recovery_seconds": 0.5,
            "openapi_refresh_seconds": 5.0,
        }
        values.update(overrides)
        return GatewaySettings(**values)

    return build


@pytest.fixture(scope="session")
def start_gateway(gateway_settings: Callable[..., GatewaySettings]) -> GatewayFactory:
    """`async with start_gateway(**settings) as url:` a gateway on a free loopback port."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[str]:
        async with serve(create_app(gateway_settings(**overrides))) as url:
            yield url

    return start


@pytest.fixture(scope="session")
async def gateway_url(start_gateway: GatewayFactory) -> AsyncIterator[str]:
    """The gateway most tests share: rate limits off, small body limit, 1 s read timeout."""
    async with start_gateway() as url:
        yield url


@pytest.fixture
async def client(gateway_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as http:
        yield http


@pytest.fixture(scope="session")
async def token(gateway_url: str) -> str:
    """A real access token, obtained through the gateway (registration and login are public)."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=10.0) as http:
        return await UsersApi(http).token(f"gw-{uuid.uuid4().hex[:8]}@example.com")


@pytest.fixture
def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def fresh_hits(upstream_control: UpstreamControl) -> list[str]:
    upstream_control.hits.clear()
    return upstream_control.hits


@pytest.fixture(scope="session")
def next_event(upstream_control: UpstreamControl) -> asyncio.Event:
    """Set it to make the stand-in's event stream produce its next event."""
    return upstream_control.next_event


@pytest.fixture(scope="session")
def serve_stand_in() -> Callable[[int], AbstractAsyncContextManager[str]]:
    """`async with serve_stand_in(port):` a fresh stand-in upstream on `port`."""

    def start(port: int) -> AbstractAsyncContextManager[str]:
        return serve(create_upstream_app(UpstreamControl()), port=port)

    return start


@pytest.fixture(scope="session")
def open_streams(upstream_control: UpstreamControl) -> Callable[[], int]:
    """How many event streams the stand-in is still producing."""
    return lambda: upstream_control.open_streams


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis on a free port (never the machine's shared one), gone after the run."""
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [
            shutil.which("redis-server") or "/usr/bin/redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="session")
def client_close_codes(upstream_control: UpstreamControl) -> list[int]:
    """Close codes the stand-in's WebSocket received from its client (the gateway)."""
    return upstream_control.client_close_codes
