"""Outages of Redis and RabbitMQ, made by cutting a TCP proxy in front of the real servers."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.integration.helpers import collect, email_job, events, publish, running_worker
from tests.integration.proxy import TcpProxy

pytestmark = pytest.mark.integration


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def test_nothing_is_sent_while_redis_is_down_and_all_is_sent_after(
        make_settings, smtp_server, amqp_url, redis_url):
    smtp_url, recorder = smtp_server
    proxy = await TcpProxy(urlsplit(redis_url).port).start()
    settings = make_settings(smtp_url=smtp_url, redis_url=_via(redis_url, proxy.port))
    try:
        async with running_worker(settings):
            await proxy.cut()
            jobs = [email_job() for _ in range(10)]
            await publish(amqp_url, jobs)
            await asyncio.sleep(2.0)
            assert recorder.messages == [], "never sent unchecked"
            await proxy.restore()
            got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 10)
    finally:
        await proxy.close()
    assert sorted(e["id"] for e in events(got)) == sorted(j["id"] for j in jobs)
    assert len(recorder.messages) == 10


async def test_worker_survives_a_rabbitmq_connection_loss(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    proxy = await TcpProxy(urlsplit(amqp_url).port).start()
    settings = make_settings(smtp_url=smtp_url, amqp_url=_via(amqp_url, proxy.port))
    before = [email_job() for _ in range(10)]
    after = [email_job() for _ in range(10)]
    try:
        async with running_worker(settings):
            await publish(amqp_url, before)
            first = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 10)
            await proxy.cut()
            await asyncio.sleep(1.0)
            await proxy.restore()
            await publish(amqp_url, after)
            second = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 10,
                                   timeout=60)
    finally:
        await proxy.close()
    sent = {e["id"] for e in events(first) + events(second) if e["status"] == "sent"}
    assert sent == {j["id"] for j in before + after}
    assert len(recorder.messages) == 20


async def test_a_redis_that_stops_answering_holds_jobs_and_they_go_after(
        make_settings, smtp_server, amqp_url, redis_url, monkeypatch):
    """A hung Redis (connections open, no replies) is an outage too: the call times out,
    nothing is sent unchecked, and the job goes once Redis answers again. The hang is the
    proxy's: the Redis server other tests and runs share is never paused."""
    import sender.pipeline

    monkeypatch.setattr(sender.pipeline, "REDIS_CALL_TIMEOUT", 0.5)
    smtp_url, recorder = smtp_server
    proxy = await TcpProxy(urlsplit(redis_url).port).start()
    settings = make_settings(smtp_url=smtp_url, redis_url=_via(redis_url, proxy.port))
    job = email_job()
    try:
        async with running_worker(settings):
            proxy.hold()
            await publish(amqp_url, [job])
            await asyncio.sleep(1.5)  # three call timeouts: the gate has failed and retried
            assert recorder.messages == [], "never sent unchecked"
            proxy.release()
            got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=20)
    finally:
        await proxy.close()
    assert [(e["id"], e["status"]) for e in events(got)] == [(job["id"], "sent")]
    assert len(recorder.messages) == 1
