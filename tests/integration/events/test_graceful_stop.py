"""Stopping the notifications service ends its open streams instead of waiting on them, so the
lifespan shutdown (consumers, relay, telemetry flush) runs before gunicorn's deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from meshdev.customers import Account, sse_stream
from meshdev.stack import running_mesh


async def test_sigterm_ends_open_sse_streams_and_the_service_stops_gracefully(
    tmp_path: Path, http: httpx.AsyncClient
) -> None:
    async with running_mesh(tmp_path, names=("users", "notifications")) as mesh:
        alice = await Account.register(mesh.url("users"))
        notifications = mesh.processes["notifications"]
        url = f"{mesh.url('notifications')}/api/notifications/stream"

        async with sse_stream(http, url, alice.headers) as live:
            exit_code = await asyncio.to_thread(notifications.stop)
            await asyncio.wait_for(live.ended.wait(), 5)

        assert exit_code == 0
        assert "Application shutdown complete" in notifications.logs()
