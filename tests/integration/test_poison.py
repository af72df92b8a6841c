"""Hostile and poison jobs on real RabbitMQ, Redis and SMTP, consumed by the real worker: every
one ends in ``outbox.dead`` exactly once with an ``x-outbox-reason``, with a status event when
it has an id, after a bounded number of deliveries; nothing is sent."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import Counter
from typing import Any

import aio_pika
import pytest

from sender.bus import Bus
from sender.channels.base import SendResult
from sender.pipeline import ERROR_DELIVERIES
from sender.topology import TopologyMismatch
from tests.integration.helpers import collect, email_job, events, publish, running_worker

pytestmark = pytest.mark.integration
REASON = "x-outbox-reason"


def _deep(depth: int) -> bytes:
    job = {k: v for k, v in email_job(id="deep-1").items() if k != "metadata"}
    return (json.dumps(job)[:-1] + ', "metadata": ' + '{"a": ' * depth + "1" + "}" * depth
            + "}").encode()


def _with_literal(job_id: str, literal: str) -> bytes:
    return json.dumps(email_job(id=job_id, metadata={"score": 0})).replace(
        '"score": 0', f'"score": {literal}').encode()


def _counting(worker: Any) -> Counter[str]:
    """Count deliveries per body (the pipeline is looked up at each delivery)."""
    seen: Counter[str] = Counter()
    handle = worker.pipeline.handle

    async def counted(message: Any, channel: str) -> None:
        seen[hashlib.sha1(message.body).hexdigest()] += 1
        await handle(message, channel)

    worker.pipeline.handle = counted
    return seen


async def _depth(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        q = await channel.declare_queue(queue, passive=True)
        return q.declaration_result.message_count or 0
    finally:
        await connection.close()


async def _settled(amqp_url: str, queue: str, n: int) -> list[Any]:
    """``n`` messages from ``queue``, then a quiet second to show no more come."""
    got = await collect(amqp_url, queue, lambda m: len(m) >= n)
    return got + await collect(amqp_url, queue, lambda m: False, timeout=1.0)


async def test_the_attackers_bodies_each_end_in_dead_letters_once(make_settings, smtp_server,
                                                                  amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)  # no Twilio
    attacks: dict[str, tuple[bytes, str | None, str]] = {
        # body, id of the rejected event (None: no event), what the reason says
        "deep": (_deep(5000), "deep-1", "nested more than 64 levels deep"),
        "nan": (_with_literal("nan-1", "NaN"), "nan-1", "NaN and Infinity"),
        "inf": (_with_literal("inf-1", "1e999"), "inf-1", "not finite"),
        "v-true": (json.dumps(email_job(id="vtrue-1", v=True)).encode(), "vtrue-1",
                   "v: must be the integer 1"),
        "v-float": (json.dumps(email_job(id="vfloat-1", v=1.0)).encode(), "vfloat-1",
                    "v: must be the integer 1"),
        "not-after": (json.dumps(email_job(id="na-1", not_after=12345)).encode(), "na-1",
                      "not_after: must be an RFC 3339"),
        "sms-on-email": (json.dumps({"v": 1, "id": "sms-1", "account_id": "acct_1",
                                     "channel": "sms", "category": "transactional",
                                     "to": "+85291234567", "body": "hi"}).encode(), "sms-1",
                         "an sms job on the email queue"),
        "huge": (json.dumps({**{k: v for k, v in email_job().items() if k != "id"},
                             "text": "x" * 3_000_000, "id": "huge-1"}).encode(), "huge-1",
                 "over the limit"),
        # what the renderer would refuse is refused by validation (sender.validation)
        "renderer": (json.dumps(email_job(id="mime-1", **{"from": "nobody"})).encode(),
                     "mime-1", "From: 'nobody' is not an email address"),
        "no-id": (b'{"v": 1, "channel": "email", "metadata": ' + b"[" * 5000 + b"]" * 5000
                  + b"}", None, "nested more than 64 levels deep"),
    }
    good = email_job()
    async with running_worker(settings) as worker:
        deliveries = _counting(worker)
        await publish(amqp_url, [body for body, _, _ in attacks.values()], routing_key="email")
        dead = await _settled(amqp_url, "outbox.dead", len(attacks))
        await publish(amqp_url, [good])
        status = await collect(amqp_url, "outbox.status",
                               lambda m: any(e["id"] == good["id"] for e in events(m)))
        status += await collect(amqp_url, "outbox.status", lambda m: False, timeout=0.5)
    by_body = {m.body: m.headers[REASON] for m in dead}
    assert len(dead) == len(attacks) == len(by_body), "each exactly once"
    for name, (body, _, says) in attacks.items():
        assert says in by_body[body], (name, by_body[body])
        assert deliveries[hashlib.sha1(body).hexdigest()] == 1, name
    rejected = {e["id"]: e for e in events(status) if e["status"] == "rejected"}
    assert set(rejected) == {i for _, i, _ in attacks.values() if i}
    assert {e["reason"] for e in rejected.values()} == {"invalid"}
    assert rejected["sms-1"]["channel"] == "sms"
    for message in status:  # every event is valid JSON
        json.loads(message.body, parse_constant=lambda c: pytest.fail(f"{c} in an event"))
    assert [m for m in recorder.messages if b"mime-1" in m[2]] == []
    assert len(recorder.messages) == 1  # only the good job
    async with running_worker(settings) as worker:  # refused before any claim: a fixed copy
        state = await worker.pipeline.gate.job_state("acct_1", "mime-1")  # may still go
    assert not state.get("st")


async def test_an_sms_job_waits_in_its_queue_on_a_worker_without_twilio(make_settings,
                                                                        smtp_server, amqp_url):
    smtp_url, _ = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    job = {"v": 1, "id": "sms-wait", "account_id": "acct_1", "channel": "sms",
           "category": "transactional", "to": "+85291234567", "body": "hi"}
    await publish(amqp_url, [job])
    async with running_worker(settings):
        await asyncio.sleep(1.0)
    assert await _depth(amqp_url, "outbox.sms") == 1
    assert await _depth(amqp_url, "outbox.dead") == 0


class _Exploding:
    """A channel with a bug: every send raises."""

    name = "email"
    provider = "smtp"

    async def send(self, job: Any, sender: Any = None) -> SendResult:
        raise RuntimeError(f"boom for {job.id}")

    def stop(self) -> None: ...

    async def close(self) -> None: ...


async def test_an_unexpected_error_is_retried_a_bounded_number_of_times_then_dead_lettered(
        make_settings, smtp_server, amqp_url, caplog):
    caplog.set_level(logging.WARNING, logger="outbox")
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    job = email_job(metadata={"crm": 7})
    async with running_worker(settings) as worker:
        worker.channels["email"] = _Exploding()
        deliveries = _counting(worker)
        await publish(amqp_url, [job])
        dead = await _settled(amqp_url, "outbox.dead", 1)
        status = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
        state = await worker.pipeline.gate.job_state("acct_1", job["id"])
    assert len(dead) == 1
    assert dead[0].headers[REASON] == \
        f"unexpected error on delivery {ERROR_DELIVERIES}: RuntimeError: boom for {job['id']}"
    assert json.loads(dead[0].body) == job  # the body, untouched
    assert sum(deliveries.values()) == ERROR_DELIVERIES
    [event] = events(status)
    assert (event["id"], event["status"], event["reason"]) == (job["id"], "failed", "error")
    assert event["metadata"] == {"crm": 7}
    assert state["st"] == "failed"  # recorded: a republish answers "done", never resends
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    assert len([r for r in caplog.records if "boom" in r.getMessage()]) == ERROR_DELIVERIES
    assert recorder.messages == []


async def test_an_error_after_the_send_is_not_retried(make_settings, smtp_server, amqp_url,
                                                      monkeypatch):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    job = email_job()
    async with running_worker(settings) as worker:
        gate = worker.pipeline.gate
        real = gate.post_send

        async def broken(*args: Any, **kw: Any) -> Any:
            if kw.get("status") == "sent":
                raise RuntimeError("post-send bug")
            return await real(*args, **kw)

        monkeypatch.setattr(gate, "post_send", broken)
        deliveries = _counting(worker)
        await publish(amqp_url, [job])
        dead = await _settled(amqp_url, "outbox.dead", 1)
    assert dead[0].headers[REASON] == "sent, then an unexpected error: RuntimeError: " \
        "post-send bug"
    assert sum(deliveries.values()) == 1
    assert len(recorder.messages) == 1, "sent once, not once per retry"


async def test_the_status_queue_is_bounded_and_drops_the_oldest(make_settings, amqp_url):
    settings = make_settings(status_queue_max_length=5)
    bus = Bus(amqp_url, retry_tiers=settings.retry_tiers, status_max_length=5)
    await bus.connect()
    try:
        for n in range(12):
            await bus.publish_event({"id": f"e{n}", "channel": "email", "status": "sent"})
    finally:
        await bus.close()
    kept = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 5)
    assert [e["id"] for e in events(kept)] == [f"e{n}" for n in range(7, 12)]
    assert await _depth(amqp_url, "outbox.status") == 0


async def test_a_status_queue_declared_otherwise_is_named_with_the_fix(amqp_url):
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.declare_queue("outbox.status", durable=True,
                                arguments={"x-queue-type": "quorum"})  # an older deployment
    await connection.close()
    bus = Bus(amqp_url, retry_tiers=(1,))
    try:
        with pytest.raises(TopologyMismatch) as info:
            await bus.connect()
    finally:
        await bus.close()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("queue outbox.status exists with other arguments (")
    assert "x-max-length" in message and "OUTBOX_STATUS_QUEUE_MAX_LENGTH" in message
    unbounded = Bus(amqp_url, retry_tiers=(1,), status_max_length=0)
    await unbounded.connect()  # the setting that matches it works
    await unbounded.close()


async def test_the_worker_names_a_mismatched_status_queue_in_one_line(amqp_url, redis_url):
    import os
    import subprocess
    import sys

    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.declare_queue("outbox.status", durable=True,
                                arguments={"x-queue-type": "quorum"})
    await connection.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTBOX_")}
    env.update(OUTBOX_AMQP_URL=amqp_url, OUTBOX_REDIS_URL=redis_url)
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "outbox", "--log-level", "ERROR", "worker"],
        env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "outbox: queue outbox.status exists with other arguments ("), done.stderr
