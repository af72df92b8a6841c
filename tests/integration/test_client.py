"""The CRM's client (sender.client) on real RabbitMQ, Redis and a real worker: jobs built with
keyword arguments are sent, a batch is confirmed, invalid jobs never reach the broker, and
status events come back typed, filtered by routing key."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import pytest

from outbox.devsinks.twilio_api import TwilioStandIn
from sender.client import EVENTS_MAX_LENGTH, InvalidBatch, Outbox, email_job, sms_job
from sender.models import EmailJob, InvalidJob, SmsJob, StatusEvent
from tests.conftest import PROFILE, services
from tests.integration.helpers import collect, events, queue_depth, running_worker, wait_for

pytestmark = pytest.mark.integration
SID, TOKEN, FROM = "AC" + "4" * 32, "client-token", "+15005550006"


def _email(n: int, **fields: Any) -> EmailJob:
    base: dict[str, Any] = dict(id=f"crm-{n}", account_id="acct_crm", category="transactional",
                                to=f"user{n}@example.com", from_="Shop <shop@example.com>",
                                subject=f"Receipt {n}", text=f"Thank you {n}",
                                metadata={"order": n})
    return email_job(**{**base, **fields})


@pytest.fixture
async def twilio(make_settings: Any) -> AsyncIterator[tuple[Any, TwilioStandIn]]:
    api = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=60)
    base = await api.start()
    yield dict(twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_from=FROM,
               twilio_api_base=base), api
    await api.close()


async def test_send_email_and_send_sms_publish_jobs_a_real_worker_sends(
        make_settings: Any, smtp_server: Any, twilio: Any, amqp_url: str) -> None:
    smtp_url, recorder = smtp_server
    twilio_settings, api = twilio
    async with Outbox(amqp_url) as outbox:
        email = await outbox.send_email(
            id="welcome-7", account_id="acct_crm", category="transactional",
            to="ana@example.com", from_="Shop <shop@example.com>", subject="Welcome, Ana",
            text="Hello", metadata={"crm_id": 7})
        sms = await outbox.send_sms(
            id="otp-7", account_id="acct_crm", category="notification", topic="login",
            to="+85291230001", body="Your code is 123456")
    assert isinstance(email, EmailJob) and isinstance(sms, SmsJob)
    async with running_worker(make_settings(smtp_url=smtp_url, **twilio_settings)):
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 2)
    assert {(m.routing_key, e["id"], e["status"]) for m, e in zip(got, events(got), strict=True)
            } == {("email.sent", "welcome-7", "sent"), ("sms.sent", "otp-7", "sent")}
    assert [e["metadata"] for e in events(got) if e["id"] == "welcome-7"] == [{"crm_id": 7}]
    assert b"Subject: Welcome, Ana" in recorder.by_rcpt("ana@example.com")[0]
    assert [m["body"] for m in api.messages] == ["Your code is 123456"]


async def test_publish_many_waits_for_every_confirm(amqp_url: str) -> None:
    jobs: list[Any] = [_email(n) for n in range(300)]
    jobs[7] = jobs[7].model_dump(by_alias=True)  # a mapping is taken as well as a model
    async with Outbox(amqp_url, publish_window=32) as outbox:
        result = await outbox.publish_many(jobs)
    assert result.ok and result.failed == ()
    assert sorted(j.id for j in result.published) == sorted(f"crm-{n}" for n in range(300))
    assert await queue_depth(amqp_url, "outbox.email") == 300  # confirmed: all in the queue


async def test_publish_many_reports_the_jobs_the_broker_did_not_take(amqp_url: str) -> None:
    jobs = [_email(1), sms_job(id="sms-2", account_id="acct_crm", category="transactional",
                               to="+85291230002", body="hi"), _email(3)]
    async with Outbox(amqp_url) as outbox:
        connection = await aio_pika.connect(amqp_url)  # SMS jobs now have nowhere to go
        channel = await connection.channel()
        sms_queue = await channel.declare_queue("outbox.sms", passive=True)
        await sms_queue.unbind("outbox.jobs", "sms")
        await connection.close()
        result = await outbox.publish_many(jobs)
    assert not result.ok
    assert [j.id for j in result.published] == ["crm-1", "crm-3"]
    assert [(j.id, "NO_ROUTE" in why or "unroutable" in why.lower())
            for j, why in result.failed] == [("sms-2", True)]
    assert await queue_depth(amqp_url, "outbox.email") == 2
    assert await queue_depth(amqp_url, "outbox.sms") == 0


async def test_an_invalid_job_is_refused_before_publishing(amqp_url: str) -> None:
    async with Outbox(amqp_url) as outbox:
        with pytest.raises(InvalidJob) as caught:
            await outbox.send_email(id="bad-1", account_id="acct_crm", category="marketing",
                                    to="ana at example.com", from_="Shop <shop@example.com>",
                                    subject="Sale", text="50% off")
        assert caught.value.reason.startswith("to: ")
        with pytest.raises(InvalidJob, match="body: String should have at least 1 character"):
            await outbox.send_sms(id="bad-2", account_id="acct_crm", category="transactional",
                                  to="+85291230002", body="")
        with pytest.raises(InvalidBatch, match=r"job 1 \(bad-3\): .*text or html"):
            await outbox.publish_many([_email(1), {**_email(2).model_dump(by_alias=True),
                                                   "id": "bad-3", "text": None}])
        with pytest.raises(InvalidJob, match="not finite"):
            await outbox.publish({**_email(4).model_dump(by_alias=True),
                                  "metadata": {"x": float("nan")}})
    assert await queue_depth(amqp_url, "outbox.email") == 0  # nothing of any of them published
    assert await queue_depth(amqp_url, "outbox.sms") == 0


async def _bindings(amqp_url: str) -> list[dict[str, Any]]:
    vhost = urlsplit(amqp_url).path.lstrip("/")
    found = await asyncio.to_thread(services.management, PROFILE, "GET",
                                    f"exchanges/{vhost}/outbox.status/bindings/source")
    assert isinstance(found, list)
    return found


@contextlib.asynccontextmanager
async def _listening(outbox: Outbox, amqp_url: str, *keys: str, **options: Any
                     ) -> AsyncIterator[list[StatusEvent]]:
    """Collect ``outbox.events(*keys)`` in the background; yields once its queue is bound."""
    got: list[StatusEvent] = []
    before = len(await _bindings(amqp_url))

    async def consume() -> None:
        async for event in outbox.events(*keys, **options):
            got.append(event)

    task = asyncio.create_task(consume())
    try:
        await wait_for_bindings(amqp_url, before + len(keys or ("#",)))
        yield got
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for_bindings(amqp_url: str, count: int, *, exactly: bool = False) -> None:
    for _ in range(200):
        found = len(await _bindings(amqp_url))
        if found == count or (found > count and not exactly):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"outbox.status did not get to {count} bindings in time")


async def test_events_of_jobs_a_real_worker_processed_filtered_by_routing_key(
        make_settings: Any, smtp_server: Any, twilio: Any, amqp_url: str) -> None:
    smtp_url, recorder = smtp_server
    twilio_settings, _ = twilio
    recorder.replies["gone@example.com"] = "550 5.1.1 <gone@example.com>: no such user"
    async with Outbox(amqp_url) as outbox, \
            _listening(outbox, amqp_url, "email.*") as email_events, \
            _listening(outbox, amqp_url, "*.bounced") as bounces, \
            _listening(outbox, amqp_url, "sms.#") as sms_events:
        exclusive = [q for q in await asyncio.to_thread(
            services.management, PROFILE, "GET", f"queues/{urlsplit(amqp_url).path.lstrip('/')}")
            if q["exclusive"]]
        assert len(exclusive) == 3  # bounded and gone with the connection
        assert all(q["auto_delete"] and q["arguments"] == {
            "x-max-length": EVENTS_MAX_LENGTH, "x-overflow": "drop-head"} for q in exclusive)
        await outbox.send_email(id="ok-1", account_id="acct_crm", category="transactional",
                                to="ana@example.com", from_="Shop <shop@example.com>",
                                subject="Receipt", text="Thanks", metadata={"crm": 1})
        await outbox.send_email(id="gone-1", account_id="acct_crm", category="transactional",
                                to="gone@example.com", from_="Shop <shop@example.com>",
                                subject="Receipt", text="Thanks")
        await outbox.send_sms(id="sms-1", account_id="acct_crm", category="transactional",
                              to="+85291230001", body="Your parcel is here")
        async with running_worker(make_settings(smtp_url=smtp_url, **twilio_settings)):
            await wait_for(lambda: len(email_events) >= 2 and len(bounces) >= 1
                           and len(sms_events) >= 1)
            await asyncio.sleep(0.3)  # nothing else is on its way
    assert sorted((e.routing_key, e.id, e.status) for e in email_events) == [
        ("email.bounced", "gone-1", "bounced"), ("email.sent", "ok-1", "sent")]
    assert [(e.id, e.reason) for e in bounces] == [("gone-1", "userunknown")]
    assert [(e.routing_key, e.id) for e in sms_events] == [("sms.sent", "sms-1")]
    sent = next(e for e in email_events if e.id == "ok-1")
    assert sent.metadata == {"crm": 1} and sent.provider == "smtp" and sent.at.tzinfo
    assert sms_events[0].model_extra and sms_events[0].model_extra["segments"] == 1
    # the connection is closed: its queues went with it, outbox.status's own binding stays
    await wait_for_bindings(amqp_url, 1, exactly=True)
    assert [b["destination"] for b in await _bindings(amqp_url)] == ["outbox.status"]


async def test_a_durable_events_queue_keeps_what_came_while_away(
        make_settings: Any, smtp_server: Any, amqp_url: str) -> None:
    smtp_url, _ = smtp_server
    async with Outbox(amqp_url) as outbox, _listening(outbox, amqp_url, "email.sent",
                                                      queue="crm.sent") as seen:
        pass  # declared and bound; nothing yet
    assert seen == []
    async with Outbox(amqp_url) as outbox:
        await outbox.publish_many([_email(1), _email(2)])
    async with running_worker(make_settings(smtp_url=smtp_url)):
        await wait_for_depth(amqp_url, "crm.sent", 2)
    async with Outbox(amqp_url) as outbox:
        got: list[StatusEvent] = []
        async with contextlib.aclosing(outbox.events("email.sent", queue="crm.sent")) as stream:
            async for event in stream:
                got.append(event)
                if len(got) == 2:
                    break
    assert sorted(e.id for e in got) == ["crm-1", "crm-2"]


async def wait_for_depth(amqp_url: str, queue: str, depth: int) -> None:
    for _ in range(300):
        if await queue_depth(amqp_url, queue) >= depth:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{queue} did not reach {depth} messages")
