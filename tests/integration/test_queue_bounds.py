"""Every queue Outbox declares is bounded in messages and bytes (issue 25, item 1), read back
from the real RabbitMQ's management API; a publish over a full queue is refused (a nack, raised
as ``QueueFull``) and nothing already queued is dropped; the bounce listener answers 451 when
``outbox.dead`` is full, and counts it."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import aiosmtplib
import pytest
from prometheus_client import CollectorRegistry

from sender import topology
from sender.bus import Bus, QueueFull
from sender.service import make_redis
from tests.conftest import PROFILE, services
from tests.integration.helpers import collect, email_job, events, publish, running_worker
from webhooks.bounces import ListenerConfig, start_bounce_listener

pytestmark = pytest.mark.integration
TIERS = (1, 60)


async def _queues(amqp_url: str) -> dict[str, dict[str, Any]]:
    """Each queue of the test's vhost: its management API record."""
    vhost = quote(urlsplit(amqp_url).path.lstrip("/"), safe="")
    found = await asyncio.to_thread(services.management, PROFILE, "GET", f"queues/{vhost}")
    assert isinstance(found, list)
    return {q["name"]: q for q in found}


async def test_every_declared_queue_is_bounded_in_messages_and_bytes(amqp_url):
    bus = Bus(amqp_url, retry_tiers=TIERS)
    await bus.connect()
    await bus.close()
    queues = await _queues(amqp_url)
    _, declared = topology.describe(TIERS)
    assert sorted(queues) == sorted(q.name for q in declared)
    for name, queue in queues.items():
        args = queue["arguments"]
        assert args["x-max-length"] > 0 and args["x-max-length-bytes"] > 0, name
        assert args["x-overflow"] == ("drop-head" if name == "outbox.status"
                                      else "reject-publish"), name
    assert queues["outbox.dead"]["arguments"]["x-max-length-bytes"] == 1024**3
    assert queues["outbox.email"]["arguments"]["x-max-length"] == 1_000_000


@pytest.fixture
def small_bounds(monkeypatch):
    """Job queues of 3 messages and outbox.dead of 2, for this test's fresh vhost."""
    monkeypatch.setitem(topology.BOUNDS, "jobs", (3, 1024**3))
    monkeypatch.setitem(topology.BOUNDS, "dead", (2, 1024**3))


async def test_a_publish_over_a_full_job_queue_is_refused_not_dropped(amqp_url, small_bounds):
    bus = Bus(amqp_url, retry_tiers=TIERS)
    await bus.connect()
    taken, refused = [], []
    try:
        for n in range(8):
            try:
                await bus.publish_job(email_job(id=f"job-{n}"), "email")
                taken.append(f"job-{n}")
            except QueueFull as exc:
                refused.append(exc)
        await bus.publish_job(email_job(id="job-sms"), "sms")  # another queue still takes jobs
    finally:
        await bus.close()
    # a quorum queue notices it is full after the message that fills it: 3 or 4 are taken
    assert taken in (["job-0", "job-1", "job-2"], ["job-0", "job-1", "job-2", "job-3"]), taken
    assert len(refused) == 8 - len(taken)
    assert all(e.queue == "outbox.email" and str(e).startswith("outbox.email is full (nack)")
               for e in refused)
    kept = await _drain(amqp_url, "outbox.email")
    assert [json.loads(body)["id"] for body in kept] == taken  # what was confirmed is there


async def _drain(amqp_url: str, queue: str) -> list[bytes]:
    """The bodies in ``queue``, oldest first (acknowledged)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        source = await channel.get_queue(queue, ensure=False)
        bodies = []
        while (message := await source.get(fail=False)) is not None:
            bodies.append(message.body)
            await message.ack()
        return bodies
    finally:
        await connection.close()


async def test_the_bounce_listener_answers_451_when_outbox_dead_is_full_and_counts_it(
        make_settings, amqp_url, unused_tcp_port, small_bounds):
    settings = make_settings(bounce_domain="bounces.outbox.example", bounces_burst=10_000)
    registry = CollectorRegistry()
    bus = Bus.from_settings(settings)
    await bus.connect()
    redis = make_redis(settings)
    server = await start_bounce_listener(ListenerConfig.from_settings(settings), bus=bus,
                                         redis=redis, host="127.0.0.1", port=unused_tcp_port,
                                         registry=registry)
    codes = []
    try:
        for n in range(6):
            try:
                await aiosmtplib.send(f"Subject: hello {n}\r\n\r\nnot a bounce\r\n".encode(),
                                      sender="a@b.example",
                                      recipients=["postmaster@bounces.outbox.example"],
                                      hostname="127.0.0.1", port=unused_tcp_port)
                codes.append(250)
            except aiosmtplib.SMTPResponseException as exc:
                codes.append(exc.code)
    finally:
        server.close()
        await server.wait_closed()
        await bus.close()
        await redis.aclose()
    kept = await _drain(amqp_url, "outbox.dead")
    taken = codes.count(250)
    assert taken in (2, 3) and codes == [250] * taken + [451] * (6 - taken), codes
    assert [f"hello {n}".encode() in body for n, body in enumerate(kept)] == [True] * taken
    assert registry.get_sample_value("outbox_queue_refused_total",
                                     {"queue": "outbox.dead"}) == 6 - taken


async def test_a_job_whose_dead_letter_the_broker_refuses_is_kept_then_dead_lettered(
        make_settings, amqp_url, small_bounds, monkeypatch):
    """A real refusal inside the worker: an invalid job must go to outbox.dead, which is full
    (reject-publish: the broker nacks the worker's publish). The job is not acked, no
    ``rejected`` event claims it was dead-lettered, the broker still holds it, and it is not
    returned at once after each refusal: a quorum queue counts every return towards its
    delivery limit (20), and returned at once it once spent them in milliseconds, leaving the
    broker to dead-letter the job without Outbox's reason. Once outbox.dead has room, the
    job is dead-lettered by Outbox, with its reason and its ``rejected`` event."""
    from sender import worker as worker_module

    monkeypatch.setattr(worker_module, "QUEUE_FULL_FIRST_WAIT", 0.5)
    settings = make_settings()
    fillers = await _fill_dead(settings)
    bad = {**email_job(id="job-undeliverable-dead"), "to": "not an address"}
    async with running_worker(settings):
        await publish(amqp_url, [bad])
        early = await collect(amqp_url, "outbox.status", lambda m: False, timeout=4)
        assert events(early) == []  # refused: not claimed rejected
        held = await _held(amqp_url, "outbox.email")
        # 4 s of refusals: returned after 0.5, 1 and 2 s of waiting, not 20 times
        assert held["messages"] == 1 and held["message_stats"].get("ack", 0) == 0
        assert held["message_stats"].get("redeliver", 0) <= 4
        assert await _drain(amqp_url, "outbox.dead") == [b'{"filler": true}'] * fillers
        later = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=15)
    [event] = events(later)
    assert (event["id"], event["status"]) == ("job-undeliverable-dead", "rejected")
    [letter] = await _drain(amqp_url, "outbox.dead")
    assert json.loads(letter)["id"] == "job-undeliverable-dead"


async def _held(amqp_url: str, queue: str, timeout: float = 30) -> dict[str, Any]:
    """The management record of ``queue`` once its statistics are in (every 5 s)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        record = (await _queues(amqp_url))[queue]
        if "messages" in record and "ack" in record.get("message_stats", {}) or \
                asyncio.get_running_loop().time() > deadline:
            return record
        await asyncio.sleep(1)


async def _fill_dead(settings: Any) -> int:
    """Publish fillers on outbox.dead until the broker refuses one; how many it took."""
    bus = Bus.from_settings(settings)
    await bus.connect()
    fillers = 0
    try:
        while fillers < 10:
            await bus.publish_dead(b'{"filler": true}', "filler", "email")
            fillers += 1
    except QueueFull:
        return fillers
    finally:
        await bus.close()
    raise AssertionError("outbox.dead never refused a publish")
