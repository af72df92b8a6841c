"""Hostile job bodies against the real worker: 10,000 messages, each ends in exactly one place.

Hypothesis draws the bodies: random bytes, random JSON, bodies nested thousands deep, and valid
jobs with one field made hostile (a wrong type, NaN, a relay-control header, an address with
an invisible character or in another IDN form, a wrong channel for the queue, a body over the
size limit, ...). Each message carries an ``x-fuzz`` header. At the end, every message is in
exactly one place: dead-lettered once (with a reason), or finished with one final status
event for its job, or waiting on ``outbox.sms`` (this worker has no Twilio); the relay got
each job at most once and only jobs whose event says ``sent``; every event is valid JSON.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.helpers import running_worker, served_in_thread

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BATCHES, PER_BATCH = 200, 50  # 10,000 jobs
FINAL = {"sent", "rejected", "suppressed", "no_consent", "blocked", "expired", "failed",
         "bounced", "complained", "unsubscribed"}
_ids = iter(range(10**9))

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=3),
    max_leaves=8)
_HOSTILE_HEADERS = ["Bcc", "Cc", "Resent-Bcc", "Errors-To", "Return-Path", "Received",
                    "X-SES-CONFIGURATION-SET", "X-SMTPAPI", "X-Mailgun-Variables", "X-PM-Tag",
                    "X-Outbox-Account", "Content-Type", "DKIM-Signature", "Sender",
                    "List-Unsubscribe", "X-Ok-Header", "Subject", "X-Bad\nName", "X-Crlf"]
_HOSTILE_ADDRESSES = ["us\u200ber@example.com", "user@xn--bcher-kva.example",
                      "user@bücher.example", "USER@EXAMPLE.COM", "a@b", "<x@example.com>",
                      "Eve <eve@example.com>", "x@example.com\r\nBcc: y@example.com",
                      "\ufeffbom@example.com", "x@exa\u00admple.com", "user@@example.com",
                      "user@.example.com", "ｕｓｅｒ@example.com", "user\x00@example.com"]


def _valid(n: int) -> dict[str, Any]:
    return {"v": 1, "id": f"fz-{n}", "account_id": f"acct_fz{n % 5}", "channel": "email",
            "category": "transactional", "to": f"user{n}@example.com",
            "from": "Acme <sales@acme.example>", "subject": f"Receipt {n}",
            "text": f"Thank you {n}", "metadata": {"n": n}}


@st.composite
def _body(draw: st.DrawFn) -> tuple[int, bytes, str]:
    """(n, body, routing key) of one hostile message."""
    n = next(_ids)
    kind = draw(st.sampled_from(["binary", "json", "deep", "mutated", "mutated", "mutated",
                                 "valid", "sms", "huge"]))
    key = "email"
    if kind == "binary":
        return n, draw(st.binary(max_size=300)), key
    if kind == "json":
        return n, json.dumps(draw(_json)).encode(), key
    if kind == "deep":
        depth = draw(st.integers(50, 6000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = json.dumps(_valid(n)) if draw(st.booleans()) else "1"
        return n, (opener * depth + inner + closer * depth).encode(), key
    job: dict[str, Any] = _valid(n)
    if kind == "sms":
        job.update(channel="sms", to="+85291234567", body="hello")
        for field in ("from", "subject", "text"):
            job.pop(field)
        key = draw(st.sampled_from(["sms", "email"]))
    elif kind == "huge":
        size = draw(st.sampled_from([1024 * 1024, 3 * 1024 * 1024]))
        job["text"] = "x" * size
    elif kind == "mutated":
        how = draw(st.sampled_from(["drop", "retype", "extra", "nan", "v", "not_after",
                                    "header", "address", "channel", "category", "id"]))
        if how == "drop":
            job.pop(draw(st.sampled_from(sorted(job))))
        elif how == "retype":
            # not the id: a valid id drawn twice would be one job published twice
            job[draw(st.sampled_from(sorted(set(job) - {"id"})))] = draw(_json)
        elif how == "extra":
            job[draw(st.text(min_size=1, max_size=10))] = draw(_json)
        elif how == "nan":
            token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999"]))
            return n, json.dumps(job).replace('"metadata": {"n": ',
                                              f'"metadata": {{"x": {token}, "n": ').encode(), key
        elif how == "v":
            job["v"] = draw(st.sampled_from([True, 1.0, "1", 2, 0, None, [1]]))
        elif how == "not_after":
            job["not_after"] = draw(st.sampled_from(
                [12345, "2020-01-01T00:00:00Z", "2999-01-01T00:00:00Z", "2999-01-01",
                 "tomorrow", "2999-01-01T00:00:00", None, 1.5e12]))
        elif how == "header":
            name = draw(st.sampled_from(_HOSTILE_HEADERS))
            value = "v\r\nBcc: x@evil.example" if name == "X-Crlf" else draw(
                st.text(max_size=40))
            job["headers"] = {name: value}
        elif how == "address":
            job["to"] = draw(st.sampled_from(_HOSTILE_ADDRESSES))
        elif how == "channel":
            job["channel"] = draw(st.sampled_from(["sms", "fax", "", None, "EMAIL"]))
        elif how == "category":
            job["category"] = draw(st.sampled_from(["marketing", "notification", "spam"]))
        else:
            job["id"] = draw(st.sampled_from(["", "a:b", "x" * 200, "../etc", "ok id", 7]))
    return n, json.dumps(job, ensure_ascii=False).encode(), key


class _Sink:
    """Everything the worker left behind, gathered by consumers in the worker's thread."""

    def __init__(self) -> None:
        self.dead: list[tuple[int | None, str]] = []  # (x-fuzz, reason)
        self.events: list[bytes] = []
        self.lock = threading.Lock()


async def _drain(amqp_url: str, sink: _Sink, stop: asyncio.Event) -> None:
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=500)

    async def on_dead(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        fuzz = message.headers.get("x-fuzz")
        with sink.lock:
            sink.dead.append((int(fuzz) if fuzz is not None else None,  # type: ignore[arg-type]
                              str(message.headers.get("x-outbox-reason", ""))))
        await message.ack()

    async def on_event(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        with sink.lock:
            sink.events.append(message.body)
        await message.ack()

    await (await channel.get_queue("outbox.dead")).consume(on_dead)
    await (await channel.get_queue("outbox.status")).consume(on_event)
    await stop.wait()
    await connection.close()


@pytest.fixture
def fuzz_worker(make_settings, amqp_url):
    """The real worker (and a real SMTP server) in a thread of their own, plus consumers of
    outbox.dead and outbox.status; the test publishes from its own thread."""
    from tests.conftest import Recorder, RecordingHandler

    class HeadsOnly(RecordingHandler):
        """Keeps each message's header only (the test reads its Message-ID): the valid 1 MiB
        bodies it sends would hold about 600 MB for the test's length."""

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            content = envelope.original_content
            end = content.find(b"\r\n\r\n")
            envelope.original_content = content if end < 0 else content[:end + 4]
            return await super().handle_DATA(server, session, envelope)

    recorder, sink = Recorder(), _Sink()

    @asynccontextmanager
    async def serve() -> AsyncIterator[None]:
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(HeadsOnly(recorder), enable_SMTPUTF8=True,
                         data_size_limit=0, hostname="fuzz-mx"), host="127.0.0.1", port=0)
        port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        settings_ = make_settings(smtp_url=f"smtp://127.0.0.1:{port}")
        async with running_worker(settings_):
            drain = asyncio.create_task(_drain(amqp_url, sink, stop))
            yield
            stop.set()
            await drain
        server.close()

    with served_in_thread(serve):
        yield recorder, sink


async def _publish(amqp_url: str, batch: list[tuple[int, bytes, str]]) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange("outbox.jobs")
        await asyncio.gather(*(
            exchange.publish(aio_pika.Message(body, headers={"x-fuzz": n},
                                              delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                             routing_key=key, mandatory=True)
            for n, body, key in batch))
    finally:
        await connection.close()


async def _queue_length(amqp_url: str, name: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    try:
        queue = await (await connection.channel()).declare_queue(name, passive=True)
        return queue.declaration_result.message_count or 0
    finally:
        await connection.close()


def _strict_json(raw: bytes) -> Any:
    def refuse(token: str) -> Any:
        raise ValueError(f"{token} in an event")
    return json.loads(raw, parse_constant=refuse)


# the worker's thread (its AMQP and Redis clients) may use `random` while a batch is drawn
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning")
def test_hostile_job_bodies_each_end_in_exactly_one_place(fuzz_worker, amqp_url):
    recorder, sink = fuzz_worker
    published: dict[int, tuple[bytes, str]] = {}  # n -> (the body's first 150 bytes, key)

    @settings(max_examples=BATCHES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(batch=st.lists(_body(), min_size=PER_BATCH, max_size=PER_BATCH))
    def publish(batch: list[tuple[int, bytes, str]]) -> None:
        asyncio.run(_publish(amqp_url, batch))
        # the first 150 bytes are all a failure report shows (the 1-3 MiB bodies, kept
        # whole, held 2.7 GB for the test's length)
        published.update({n: (body[:150], key) for n, body, key in batch})

    publish()
    assert len(published) == BATCHES * PER_BATCH

    def places() -> tuple[Counter[int], dict[str, list[str]], int]:
        with sink.lock:
            dead = Counter(n for n, _ in sink.dead if n is not None)
            finals: dict[str, list[str]] = {}
            for raw in sink.events:
                event = _strict_json(raw)
                if event["status"] in FINAL:
                    finals.setdefault(event["id"], []).append(event["status"])
        waiting = asyncio.run(_queue_length(amqp_url, "outbox.sms"))
        return dead, finals, waiting

    deadline = time.monotonic() + 600
    while True:
        dead, finals, waiting = places()
        settled = len(dead) + sum(1 for n in published if n not in dead
                                  and f"fz-{n}" in finals) + waiting
        if settled >= len(published) or time.monotonic() > deadline:
            break
        time.sleep(1)
    time.sleep(2)  # anything late (a second copy, a second event) shows up now
    dead, finals, waiting = places()
    assert asyncio.run(_queue_length(amqp_url, "outbox.email")) == 0

    sent_ids = Counter(m.group(1).decode() for _, _, data in recorder.messages
                       for m in [re.search(rb"Message-ID: <(fz-\d+)@", data)] if m)
    nowhere, twice = [], []
    for n, (body, key) in published.items():
        places_n = dead[n] + len(finals.get(f"fz-{n}", [])) * (n not in dead)
        if places_n == 0:
            nowhere.append((n, key, body[:150]))
        elif dead[n] > 1 or len(finals.get(f"fz-{n}", [])) > 1 and n not in dead:
            twice.append((n, dead[n], finals.get(f"fz-{n}"), body[:150]))
    # the SMS jobs on their own queue wait there for a worker with Twilio
    waiting_sms = [x for x in nowhere if x[1] == "sms"]
    assert len(waiting_sms) == waiting
    assert [x for x in nowhere if x[1] != "sms"] == [], "ended nowhere"
    assert twice == [], "ended in two places"
    assert max(sent_ids.values(), default=1) == 1, "a job reached the relay twice"
    for job_id in sent_ids:
        assert finals.get(job_id) == ["sent"], (job_id, finals.get(job_id))
    assert all(reason for _, reason in sink.dead), "a dead letter without a reason"
    statuses = Counter(s for v in finals.values() for s in v)
    print(f"\n{len(published)} jobs: {sum(dead.values())} dead-lettered, "
          f"{waiting} waiting on outbox.sms, final events {dict(statuses)}, "
          f"{len(sent_ids)} at the relay")
