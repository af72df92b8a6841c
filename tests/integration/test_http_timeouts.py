"""Slow clients against the real ``outbox webhooks`` process: each is cut by its timeout.

The server runs with ``OUTBOX_HTTP_IDLE_TIMEOUT=2`` and ``OUTBOX_HTTP_BODY_TIMEOUT=2``. A
slow-loris that keeps sending header bytes, one that keeps sending body bytes, a connection
that sends nothing and one left idle after an answer are each closed within their timeout
(with a margin for a loaded machine), while a client that sends in time is answered as usual.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TIMEOUT = 2.0
MARGIN = 4.0  # seconds a loaded 2-core machine may add before the close is seen
DRIP = 0.25  # seconds between the bytes a slow client sends


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def webhooks(amqp_url: str, redis_url: str, tmp_path: Path):
    """``outbox webhooks`` as a process of its own, with short timeouts; yields its port."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(OUTBOX_AMQP_URL=amqp_url, OUTBOX_REDIS_URL=redis_url, OUTBOX_HTTP_PORT=str(port),
               OUTBOX_HTTP_IDLE_TIMEOUT=str(TIMEOUT), OUTBOX_HTTP_BODY_TIMEOUT=str(TIMEOUT),
               OUTBOX_MAILGUN_SIGNING_KEY="key-timeouts-0123456789")
    log = tmp_path / "webhooks.log"
    proc = subprocess.Popen([sys.executable, "-m", "outbox", "webhooks"], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield port, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


async def _drip(port: int, head: bytes, drip: bytes) -> tuple[float, bytes]:
    """Send ``head``, then one byte of ``drip`` every DRIP seconds (over and over) until the
    server closes; how long the connection lasted and what the server answered."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = b""

    async def read() -> None:
        nonlocal answer
        while chunk := await reader.read(65536):
            answer += chunk

    reading = asyncio.create_task(read())
    writer.write(head)
    try:
        for i in range(int(60 / DRIP)):  # bounded: 60 s at most
            if reading.done():
                break
            if drip:
                writer.write(drip[i % len(drip):i % len(drip) + 1])
                await writer.drain()
            await asyncio.sleep(DRIP)
    except ConnectionError:
        pass  # closed by the server while we wrote
    try:
        await asyncio.wait_for(reading, 10)
    except ConnectionError:
        pass
    lasted = time.monotonic() - started
    writer.close()
    return lasted, answer


async def test_slow_headers_are_cut_at_the_idle_timeout(webhooks):
    port, _ = webhooks
    lasted, answer = await _drip(port, b"POST /webhooks/mailgun HTTP/1.1\r\nHost: x\r\n",
                                 b"X-Slow: " + b"a" * 100)
    assert TIMEOUT - 0.5 <= lasted <= TIMEOUT + MARGIN, lasted
    assert answer == b""  # nothing was read whole: nothing to answer
    print(f"\nslow headers: closed after {lasted:.2f} s (timeout {TIMEOUT:g} s)")


async def test_a_slow_body_gets_408_and_is_cut_at_the_body_timeout(webhooks):
    port, log = webhooks
    head = (b"POST /webhooks/mailgun HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n")
    lasted, answer = await _drip(port, head, b'{"a": "' + b"x" * 100)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert TIMEOUT - 0.5 <= lasted <= TIMEOUT + 2.0 + MARGIN, lasted  # 2.0: the linger
    assert "request body not received within 2 s" in log.read_text()
    print(f"\nslow body: 408, closed after {lasted:.2f} s (timeout {TIMEOUT:g} s)")


async def test_silent_and_idle_connections_are_closed(webhooks):
    port, _ = webhooks
    silent = await _drip(port, b"", b"")  # connects, never sends a byte
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    answered = time.monotonic()
    first = await reader.readuntil(b'{"ok": true}')
    rest = await asyncio.wait_for(reader.read(), TIMEOUT + MARGIN)  # b"" once closed
    idle = time.monotonic() - answered
    writer.close()
    assert first.startswith(b"HTTP/1.1 200") and rest == b""
    for lasted in (silent[0], idle):
        assert TIMEOUT - 0.5 <= lasted <= TIMEOUT + MARGIN, (silent, idle)
    print(f"\nsilent connection closed after {silent[0]:.2f} s; kept-alive one idle after its "
          f"answer closed after {idle:.2f} s")


async def test_a_client_in_time_is_answered_while_slow_ones_wait(webhooks):
    port, _ = webhooks
    slow = [asyncio.create_task(_drip(port, b"POST /webhooks/mailgun HTTP/1.1\r\nHost: x\r\n",
                                      b"X-Slow: a\r\n")) for _ in range(20)]
    await asyncio.sleep(0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b'{"signature": {}}'
    writer.write(b"POST /webhooks/mailgun HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    for i in range(len(body)):  # a body in ~0.9 s: slower than usual, within the timeout
        writer.write(body[i:i + 1])
        await asyncio.sleep(0.05)
    status = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 400"), status  # read whole, then refused as a payload
    results = await asyncio.gather(*slow)
    assert all(lasted <= TIMEOUT + MARGIN for lasted, _ in results), results
