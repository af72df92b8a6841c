"""python -m benchmarks.latency_proxy --listen PORT --to PORT --delay SECONDS

A TCP proxy on loopback that gives a relay the latency of a distant one: every byte the
relay sends back reaches the client ``--delay`` seconds after the relay wrote it (order kept;
what the client sends goes through at once). Each round trip of the SMTP dialogue so costs at
least the delay, as with a remote relay or SES's SMTP endpoint: a command answered after
``delay``, a pipelined group of commands (RFC 2920) answered together after one ``delay``,
the greeting ``delay`` after the connection.

Run as its own process (uvloop), so its work does not share the harness's event loop; it is
started and stopped by ``benchmarks.latency``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque

import uvloop

CHUNK = 1 << 16


async def _forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   delay: float) -> None:
    """Copy ``reader`` to ``writer``, each chunk written ``delay`` seconds after it was read.
    A queue and one writer task keep the order; the reader never waits for the delay, so
    bytes read while earlier ones wait are delayed by the same amount, not more."""
    loop = asyncio.get_running_loop()
    queue: deque[tuple[float, bytes]] = deque()
    ready = asyncio.Event()

    async def pump() -> None:
        while True:
            while not queue:
                ready.clear()
                await ready.wait()
            due, data = queue.popleft()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            writer.write(data)
            await writer.drain()

    task = asyncio.create_task(pump())
    try:
        while True:
            data = await reader.read(CHUNK)
            queue.append((loop.time() + delay, data))
            ready.set()
            if not data:
                break
        await task
    finally:
        task.cancel()
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(listen: int, target: int, delay: float) -> None:
    async def client(c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            r_reader, r_writer = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            c_writer.close()
            return
        await asyncio.gather(_forward(c_reader, r_writer, 0.0),
                             _forward(r_reader, c_writer, delay), return_exceptions=True)

    server = await asyncio.start_server(client, "127.0.0.1", listen, backlog=1024)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency_proxy")
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--to", type=int, required=True, help="the relay's port on 127.0.0.1")
    p.add_argument("--delay", type=float, required=True, help="seconds added to each reply")
    a = p.parse_args(argv)
    uvloop.run(_serve(a.listen, a.to, a.delay))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
