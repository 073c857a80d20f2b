"""A TCP proxy that can cut the link to a real server, for outage tests that must never touch
the shared server itself."""

from __future__ import annotations

import asyncio
import contextlib

from meshdev.processes import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to `target`; `cut()` drops every connection and refuses new
    ones (as a dead broker would); `blackhole()` keeps every connection, old and new, open but
    forwards nothing more either way (as a host whose packets are lost, with no reset ever
    coming); `restore()` forwards again (connections that lost data in the black hole are
    dropped, so clients reconnect)."""

    def __init__(self, target_host: str, target_port: int, *, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._silent = False

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._silent = False
        self._drop_connections()

    def _drop_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def blackhole(self) -> None:
        self._silent = True
        if self._server is None:
            await self.start()

    async def restore(self) -> None:
        if self._silent:
            self._silent = False
            self._drop_connections()
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        await self.cut()

    async def _handle(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        if self._silent:
            self._writers.add(client)
            with contextlib.suppress(OSError):
                while await client_reader.read(65536):
                    pass  # swallowed: no answer ever comes
            self._writers.discard(client)
            client.transport.abort()  # the client hung up: its side is done
            return
        try:
            upstream_reader, upstream = await asyncio.open_connection(*self.target)
        except OSError:
            client.transport.abort()
            return
        self._writers.update((client, upstream))

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    if self._silent:
                        continue  # lost in the black hole
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        await asyncio.gather(pipe(client_reader, upstream), pipe(upstream_reader, client))
        self._writers.difference_update((client, upstream))
