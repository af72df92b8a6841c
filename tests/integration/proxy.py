"""A TCP proxy a test can cut or hang: the way to test outages of real RabbitMQ and Redis
without touching the servers other tests and runs share."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target. ``cut()`` drops every connection and refuses
    new ones until ``restore()``; ``hold()`` is a hung server: connections stay open and new
    ones are accepted, but nothing is forwarded either way until ``release()`` (then what was
    held flows on, in order)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        if self._server is None:  # cut while this one was connecting upstream: cut it too
            writer.transport.abort()
            up_writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer, self._flowing),
                             _pipe(up_reader, writer, self._flowing))
        self._writers -= {writer, up_writer}

    def hold(self) -> None:
        """Stop forwarding (both ways, every connection, old and new); keep them all open."""
        self._flowing.clear()

    def release(self) -> None:
        """Forward again, starting with what was held."""
        self._flowing.set()

    async def cut(self) -> None:
        """Drop every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def restore(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def close(self) -> None:
        self.release()  # so no pipe is left waiting
        await self.cut()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                flowing: asyncio.Event) -> None:
    with contextlib.suppress(ConnectionError, OSError, asyncio.CancelledError):
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()
