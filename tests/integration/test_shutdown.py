"""Graceful shutdown against a relay that stores a message before it answers DATA: after
stop() begins no new send starts, the sends in flight finish within the grace, and every job
is either sent once or back in its queue untouched (sent once by the next worker)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
import pytest_asyncio

from tests.integration.helpers import collect, email_job, events, publish, running_worker, wait_for

pytestmark = pytest.mark.integration
_MID = re.compile(rb"^Message-ID: <([^@>]+)@", re.MULTILINE | re.IGNORECASE)


class HeldRelay:
    """Stores each message on DATA, then holds its reply until ``answer`` is set."""

    def __init__(self) -> None:
        self.stored: list[bytes] = []
        self.answer = asyncio.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.stored.append(envelope.original_content)
        await self.answer.wait()
        return f"250 2.0.0 Ok: queued as H{len(self.stored)}"

    def ids(self) -> Counter[str]:
        return Counter(m.group(1).decode() for data in self.stored
                       for m in [_MID.search(data)] if m)


@pytest_asyncio.fixture
async def held_relay() -> AsyncIterator[tuple[str, HeldRelay]]:
    from aiosmtpd.smtp import SMTP

    relay = HeldRelay()
    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(relay, hostname="held-mx"), host="127.0.0.1", port=0)
    yield f"smtp://127.0.0.1:{server.sockets[0].getsockname()[1]}", relay
    relay.answer.set()
    server.close()
    await server.wait_closed()


async def _depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        q = await (await connection.channel()).declare_queue(queue, passive=True)
        return q.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_stop_starts_no_new_send_and_loses_nothing(make_settings, held_relay, amqp_url):
    smtp_url, relay = held_relay
    # 2 connections, 8 jobs at once: 2 in DATA, 6 waiting for a pool slot at stop()
    settings = make_settings(smtp_url=smtp_url, smtp_pool_size=2, concurrency=8, prefetch=8,
                             smtp_timeout=5.0, shutdown_grace=5.0)
    jobs = [email_job() for _ in range(12)]
    await publish(amqp_url, jobs)
    async with running_worker(settings) as worker:
        await wait_for(lambda: len(relay.stored) == 2 and worker.inflight == 8, timeout=20)
        stopping = asyncio.create_task(worker.stop())
        await asyncio.sleep(0.5)  # the waiters have given up by now; the 2 are still held
        assert not stopping.done()
        assert worker.inflight == 2
        relay.answer.set()  # the relay answers the two in flight, within the grace
        await asyncio.wait_for(stopping, 5)
    in_flight = set(relay.ids())
    assert len(relay.stored) == 2, "no send started after stop()"
    first = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2)
    assert {e["id"] for e in events(first) if e["status"] == "sent"} == in_flight
    assert await _depth(amqp_url, "outbox.email") == 10, "the rest are back in their queue"

    async with running_worker(settings):
        rest = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 10)
    assert {e["status"] for e in events(rest)} == {"sent"}
    received = relay.ids()
    assert set(received) == {j["id"] for j in jobs}
    assert max(received.values()) == 1, "nothing sent twice"


async def test_a_shutdown_during_a_broker_outage_ends(make_settings, smtp_server, amqp_url):
    """A robust channel waits for the broker forever: cancelling the consumers during an
    outage hung SIGTERM until the broker came back."""
    from urllib.parse import urlsplit

    from tests.integration.proxy import TcpProxy

    smtp_url, recorder = smtp_server
    proxy = await TcpProxy(urlsplit(amqp_url).port).start()
    port = urlsplit(amqp_url).port
    settings = make_settings(smtp_url=smtp_url,
                             amqp_url=amqp_url.replace(f":{port}/", f":{proxy.port}/"))
    jobs = [email_job() for _ in range(5)]
    try:
        async with running_worker(settings) as worker:
            await publish(amqp_url, jobs)
            await collect(amqp_url, "outbox.status", lambda m: len(m) >= 5)
            await proxy.cut()
            await asyncio.sleep(0.5)
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(worker.stop(), 15)
        # stop, close of the channels, of the SMTP pool and of the connection: all bounded
        assert asyncio.get_running_loop().time() - started < 25
    finally:
        await proxy.close()
    assert len(recorder.messages) == 5
