"""Recipient events on real RabbitMQ and Redis: every change of whether a recipient may be
contacted is published once on ``outbox.status`` as ``recipient.<channel>.<change>``.

Through the real webhook server and worker: an inbound SMS STOP signed as Twilio signs it (the
real twilio library) publishes ``unsubscribed`` once and revokes the account's consent; START
publishes ``resubscribed`` and leaves consent revoked; a one-click unsubscribe publishes
``unsubscribed`` (503 while the broker does not confirm, the retry publishing it); a Postmark
spam complaint ``complained``; support's add and remove through the CLI and the admin API
``suppressed`` and ``unsuppressed``; ``outbox events`` prints them. The record-once and
pending rules on both Redis backends.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from sender.bus import Bus, PublishFailed
from sender.recipient_events import Change, RecipientEvents
from sender.service import make_redis
from suppression import keys
from suppression.store import ConsentStore, SuppressionStore
from suppression.tokens import Unsubscribe, make_token
from tests.integration.helpers import running_app, running_worker, wait_for
from tests.unit.test_provider_postmark import record as postmark_record

pytestmark = pytest.mark.integration
SID, TOKEN, FROM = "AC" + "4" * 32, "recipient-events-token", "+15005550006"
PM_USER, PM_PASSWORD = "postmark", "pm-recipients"
ADMIN = "admin-token-recipients"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ANY = object()  # Listener.take: events of any account
QUIET = 3.0  # seconds an absence is watched for (the publish follows its write by ms)


class Listener:
    """A queue of the test's own bound to ``outbox.status`` with ``recipient.#``, consumed into
    an asyncio queue. (It once polled with ``basic_get`` under ``asyncio.timeout``: a timeout
    that cancelled a ``basic_get`` in flight left aiormq's channel broken, so the next
    ``take()`` failed, and twice in full runs a test hung past pytest's 120 s.)"""

    def __init__(self, amqp_url: str) -> None:
        self._url = amqp_url
        self._connection: Any = None
        self._inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()

    async def start(self) -> Listener:
        self._connection = await aio_pika.connect(self._url)
        channel = await self._connection.channel()
        queue = await channel.declare_queue(None, exclusive=True, auto_delete=True)
        await queue.bind("outbox.status", routing_key="recipient.#")
        await queue.consume(self._received, no_ack=True)
        return self

    async def _received(self, message: Any) -> None:
        self._inbox.put_nowait((message.routing_key, json.loads(message.body)))

    async def close(self) -> None:
        await self._connection.close()

    async def take(self, n: int, timeout: float = 30.0, *, account: Any = ANY
                   ) -> list[tuple[str, dict[str, Any]]]:
        """The next ``n`` events (routing key, body), of ``account`` only when given (on the
        shared Redis Cluster a sweep also publishes what another run left pending); fails
        when they do not come."""
        got: list[tuple[str, dict[str, Any]]] = []
        async with asyncio.timeout(timeout):  # cancels only a wait on the local queue
            while len(got) < n:
                key, event = await self._inbox.get()
                if account is ANY or event.get("account_id") == account:
                    got.append((key, event))
        return got

    async def quiet(self, seconds: float = QUIET) -> list[tuple[str, dict[str, Any]]]:
        """Whatever comes within ``seconds`` (expected: nothing)."""
        try:
            return await self.take(1, timeout=seconds)
        except TimeoutError:
            return []


@pytest.fixture
async def stack(make_settings, smtp_server, unused_tcp_port, amqp_url
                ) -> AsyncIterator[tuple[Any, str, Listener]]:
    """The webhook server (Twilio, Postmark, admin API) and a worker, on one settings; and a
    listener bound before anything happens."""
    smtp_url, _ = smtp_server
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(
        smtp_url=smtp_url, twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_from=FROM,
        public_url=public, postmark_webhook_user=PM_USER, postmark_webhook_password=PM_PASSWORD,
        admin_tokens=f"alice:admin:{ADMIN}")
    async with running_app(settings, unused_tcp_port) as base, running_worker(settings):
        listener = await Listener(amqp_url).start()
        try:
            yield settings, base, listener
        finally:
            await listener.close()


@pytest.fixture
async def redis(make_settings):
    client = make_redis(make_settings())
    yield client
    await client.aclose()


async def _inbound(base: str, account: str, sid: str, number: str, body: str) -> int:
    """An inbound SMS as Twilio posts it, signed with the real twilio library."""
    url = f"{base}/webhooks/twilio/inbound?a={account}"
    params = {"MessageSid": sid, "From": number, "To": FROM, "Body": body, "AccountSid": SID}
    signature = RequestValidator(TOKEN).compute_signature(url, params)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=45)) as session, \
            session.post(url, data=params, headers={"X-Twilio-Signature": signature}) as response:
        return response.status


def _sid(names: Any, n: int) -> str:
    return "SM" + (names.suffix * 4)[:30] + f"{n:02d}"


def _link(base: str, settings: Any, u: Unsubscribe) -> str:
    return f"{base}/u/{make_token(settings.signing_key, u)}"


def _check(event: dict[str, Any], **expected: Any) -> None:
    assert (event["v"], event["type"]) == (1, "recipient")
    assert ISO.match(event["at"]) and event["id"]
    assert {k: event[k] for k in expected} == expected


async def _exists(redis: Any, key: str) -> None:
    async def check() -> None:
        while not await redis.exists(key):
            await asyncio.sleep(0.05)
    await asyncio.wait_for(check(), 30)


async def test_stop_publishes_once_and_revokes_consent_start_resubscribes(stack, redis, names):
    settings, base, listener = stack
    account, number = names.account("acct_stop"), names.phone(0)
    consent = ConsentStore(redis)
    await consent.grant(account, number, channel="sms", source="signup-form",
                        evidence="form 42")

    assert await _inbound(base, account, _sid(names, 1), number, " stop ") == 200
    [(key, event)] = await listener.take(1)
    assert key == "recipient.sms.unsubscribed"
    _check(event, account_id=account, channel="sms", address=number, change="unsubscribed",
           source="sms_stop")
    record = await consent.get(account, number, channel="sms")
    assert (record["status"], record["revoke_source"], record["grant_evidence"]) == \
        ("revoked", "sms_stop", "form 42")
    assert [e["reason"] for e in await SuppressionStore(redis).check(
        number, account_id=account, channel="sms")] == ["sms_stop"]

    # a second STOP (another message): applied by the worker, and nothing new published
    assert await _inbound(base, account, _sid(names, 2), number, "STOP") == 200
    await _exists(redis, keys.event(account, f"twilio:{_sid(names, 2)}:stop"))
    assert await listener.quiet() == []
    assert (await consent.get(account, number, channel="sms"))["revoked_at"] == \
        record["revoked_at"]

    # START: the opt-out entry goes, resubscribed is published, consent stays revoked
    assert await _inbound(base, account, _sid(names, 3), number, "start") == 200
    [(key, event)] = await listener.take(1)
    assert key == "recipient.sms.resubscribed"
    _check(event, account_id=account, channel="sms", address=number, change="resubscribed",
           source="sms_start")
    assert await SuppressionStore(redis).check(number, account_id=account, channel="sms") == []
    assert (await consent.get(account, number, channel="sms"))["status"] == "revoked"
    assert await listener.quiet() == []


async def test_one_click_unsubscribe_is_published_once(stack, redis, names):
    settings, base, listener = stack
    account, job = names.account("acct_u"), names.job("job-u")
    recipient = names.email("Ann@Example.com")
    link = _link(base, settings, Unsubscribe(account, "email", recipient, job))
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the second POST (a mailbox provider's retry) changes nothing
            async with session.post(link, data="List-Unsubscribe=One-Click") as response:
                assert response.status == 200
    [(key, event)] = await listener.take(1)
    assert key == "recipient.email.unsubscribed"
    _check(event, account_id=account, channel="email", address=recipient.lower(),
           change="unsubscribed", source="one_click")
    # the worker applied the handed-over event (the job's status) too: still one event
    await _exists(redis, keys.event(account, f"unsubscribe:{job}:{recipient}"))
    assert await listener.quiet() == []


async def test_an_unconfirmed_unsubscribe_is_503_and_the_retry_publishes_it(
        stack, redis, names, monkeypatch):
    settings, base, listener = stack
    account, job = names.account("acct_u503"), names.job("job-u503")
    recipient = names.email("bob@example.com")
    link = _link(base, settings, Unsubscribe(account, "email", recipient, job))
    real = RecipientEvents._publish_one

    async def refuse(self: Any, *args: Any) -> None:
        raise PublishFailed("broker did not confirm")

    monkeypatch.setattr(RecipientEvents, "_publish_one", refuse)
    async with aiohttp.ClientSession() as session:
        async with session.post(link, data="List-Unsubscribe=One-Click") as response:
            assert response.status == 503
        # the entry is written and the event pending, not lost
        assert [e["reason"] for e in await SuppressionStore(redis).check(
            recipient, account_id=account, channel="email")] == ["unsubscribe"]
        [pending] = await redis.hkeys(keys.recipient_pending(account))  # claim released
        assert pending.startswith(b"e:")
        monkeypatch.setattr(RecipientEvents, "_publish_one", real)
        async with session.post(link, data="List-Unsubscribe=One-Click") as response:
            assert response.status == 200
    [(_, event)] = await listener.take(1)
    _check(event, account_id=account, change="unsubscribed", source="one_click")
    assert await redis.hgetall(keys.recipient_pending(account)) == {}
    assert await listener.quiet() == []


async def test_a_provider_complaint_publishes_complained_once(stack, names):
    settings, base, listener = stack
    account, job = names.account("acct_pm"), names.job("job-pm")
    recipient = names.email("carl@example.com")
    auth = {"Authorization": "Basic " + base64.b64encode(
        f"{PM_USER}:{PM_PASSWORD}".encode()).decode()}
    async with aiohttp.ClientSession() as session:
        # the complaint record, then the SubscriptionChange that suppressed the address
        for name in ("spam_complaint", "subscription_change_spam"):
            body = {**postmark_record(name),
                    "Metadata": {"outbox_account": account, "outbox_job": job}}
            body["Email" if "Email" in body else "Recipient"] = recipient
            async with session.post(f"{base}/webhooks/postmark", json=body,
                                    headers=auth) as response:
                assert response.status == 200
    [(key, event)] = await listener.take(1)
    assert key == "recipient.email.complained"
    _check(event, account_id=account, channel="email", address=recipient.lower(),
           change="complained", source="postmark")
    assert await listener.quiet() == []


async def _api(base: str, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, base + path, json=body,
            headers={"Authorization": f"Bearer {ADMIN}"}) as response:
        return response.status, await response.json()


async def test_support_add_and_remove_by_cli_and_api(stack, redis, names, cli):
    settings, base, listener = stack
    account, address = names.account("acct_sup"), names.email("dee@example.com")
    await redis.sadd(keys.ACCOUNTS, account)
    add = ("suppression", "add", address, "--channel", "email", "--reason", "manual",
           "--account", account, "--actor", "alice")
    assert await cli(*add) == 0
    [(key, event)] = await listener.take(1)
    assert key == "recipient.email.suppressed"
    _check(event, account_id=account, address=address, change="suppressed", source="cli")
    assert await cli(*add) == 0  # already suppressed: nothing new
    assert await listener.quiet() == []
    assert await cli("suppression", "remove", address, "--channel", "email", "--account",
                     account, "--actor", "alice", "--reason", "asked by phone") == 0
    [(key, event)] = await listener.take(1)
    assert key == "recipient.email.unsuppressed"
    _check(event, account_id=account, change="unsuppressed", source="cli")

    # the admin API: an account's entry, then a global one (no account)
    status, body = await _api(base, "POST", "/admin/suppression", {
        "address": address, "channel": "email", "reason": "manual", "account": account})
    assert (status, body["event_published"]) == (200, True)
    status, body = await _api(base, "POST", "/admin/suppression", {
        "address": address, "channel": "email", "reason": "complaint"})
    assert (status, body["event_published"]) == (200, True)
    got = await listener.take(2)
    assert [(k, e["account_id"], e["source"]) for k, e in got] == [
        ("recipient.email.suppressed", account, "admin"),
        ("recipient.email.suppressed", None, "admin")]
    status, body = await _api(base, "DELETE", f"/admin/suppression/{address}", {
        "channel": "email", "account": account, "reason": "customer asked"})
    assert (status, body["event_published"]) == (200, True)
    [(key, event)] = await listener.take(1)
    assert (key, event["account_id"], event["source"]) == \
        ("recipient.email.unsuppressed", account, "admin")
    assert await listener.quiet() == []


async def test_outbox_events_prints_recipient_events(stack, redis, names, cli, capsys):
    settings, base, listener = stack
    account, address = names.account("acct_ev"), names.email("eve@example.com")
    await redis.sadd(keys.ACCOUNTS, account)
    tail = asyncio.ensure_future(cli("events", "--type", "recipient", "--count", "2",
                                     "--wait", "60"))
    only = asyncio.ensure_future(cli("events", "--json", "--status", "unsuppressed",
                                     "--count", "1", "--wait", "60"))
    seen = {"out": "", "err": ""}

    def listening() -> bool:
        got = capsys.readouterr()
        seen["out"] += got.out
        seen["err"] += got.err
        return seen["err"].count("listening to outbox.status") == 2

    await wait_for(listening)
    assert "(recipient.#)" in seen["err"]
    assert "(recipient.*.unsuppressed)" in seen["err"]  # no job status of that name
    for action in ("add", "remove"):
        extra = ("--reason", "manual") if action == "add" else ("--reason", "done")
        assert await cli("suppression", action, address, "--channel", "email", "--account",
                         account, "--actor", "alice", *extra) == 0
    assert await asyncio.wait_for(tail, 30) == 0
    assert await asyncio.wait_for(only, 30) == 0
    lines = (seen["out"] + capsys.readouterr().out).splitlines()
    # (the suppression commands print their tables in between)
    readable = [line for line in lines if "  recipient." in line]
    [as_json] = [json.loads(line) for line in lines if line.startswith('{"v"')]
    assert [line.split("  ")[1:] for line in readable] == [
        ["recipient.email.suppressed", account, address, "source=cli"],
        ["recipient.email.unsuppressed", account, address, "source=cli"]]
    assert all(ISO.match(line.split("  ")[0]) for line in readable)
    assert (as_json["type"], as_json["change"], as_json["address"]) == \
        ("recipient", "unsuppressed", address)
    # a status no recipient event has, asked of recipient events alone: a bad request
    assert await cli("events", "--type", "recipient", "--status", "bounced",
                     "--wait", "0.5") == 2


# --- the record-once and pending rules, on a single Redis and on the Redis Cluster ----------


class FlakyBus:
    """The real bus, whose first ``fail`` publishes are refused."""

    def __init__(self, bus: Bus, fail: int) -> None:
        self._bus, self.fail = bus, fail

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        if self.fail:
            self.fail -= 1
            raise PublishFailed("broker did not confirm")
        await self._bus.publish(*args, **kwargs)


@pytest.mark.backends
async def test_a_change_is_recorded_once_and_a_pending_event_is_published_by_the_retry(
        make_settings, amqp_url, redis_backend, names):
    settings = make_settings()
    bus = Bus.from_settings(settings)
    await bus.connect()
    redis = make_redis(settings)
    listener = await Listener(amqp_url).start()
    account, number = names.account("acct_once"), names.phone(1)
    stop = Change(account, "sms", number, "unsubscribed", "sms_stop")
    try:
        flaky: Any = FlakyBus(bus, fail=1)
        events = RecipientEvents(redis, flaky)
        with pytest.raises(PublishFailed):
            await events.announce(stop)
        assert await listener.quiet(1.0) == []
        assert await events.announce(stop) is None  # no change: the pending one goes out
        [(_, first)] = await listener.take(1)
        assert (first["change"], first["address"]) == ("unsubscribed", number)
        assert await redis.hgetall(keys.recipient_pending(account)) == {}

        # a START whose removal was made but whose event was not: still resubscribed
        start = Change(account, "sms", number, "resubscribed", "sms_start", removed=False)
        assert (await events.announce(start) or {})["change"] == "resubscribed"
        assert await events.announce(start) is None  # and only once
        # a removal that removed nothing, the recipient not stopped: no change
        assert await events.announce(Change(account, "sms", number, "unsuppressed",
                                            "cli")) is None
        # a global change (no account) has its own record
        glob = Change(None, "email", names.email("Gil@Example.com"), "suppressed", "admin")
        assert (await events.announce(glob) or {})["account_id"] is None
        assert await events.announce(glob) is None
        got = await listener.take(2)
        assert [(k, e["account_id"]) for k, e in got] == [
            ("recipient.sms.resubscribed", account), ("recipient.email.suppressed", None)]

        # two changes applied at once: the pending event goes to one caller alone (claimed)
        again = Change(account, "sms", number, "unsubscribed", "sms_stop")
        event, mine = await events.record(again)
        assert event is not None and [i for i, _ in mine] == [event["id"]]
        assert await events.record(again) == (None, [])
        await events.publish(account, mine)
        assert [e["id"] for _, e in await listener.take(1)] == [event["id"]]
        assert await listener.quiet(1.0) == []
    finally:
        await listener.close()
        await redis.aclose()
        await bus.close()


@pytest.mark.backends
async def test_the_sweep_publishes_what_a_vanished_publisher_claimed(
        make_settings, amqp_url, redis_backend, names):
    """A process killed between claiming an event and publishing it: the event waits for the
    claim time, then the worker's sweep publishes it (no later change needed)."""
    settings = make_settings()
    bus = Bus.from_settings(settings)
    await bus.connect()
    redis = make_redis(settings)
    listener = await Listener(amqp_url).start()
    account = names.account("acct_sweep")
    try:
        # a claim time a loaded machine cannot spend between record() and sweep()
        events = RecipientEvents(redis, bus, claim_seconds=3.0)
        event, claimed = await events.record(Change(account, "email", names.email(
            "Hal@example.com"), "unsubscribed", "one_click"))
        assert event is not None and [i for i, _ in claimed] == [event["id"]]
        # ...and its publisher is gone. Within the claim time nobody takes it over:
        await events.sweep()
        assert await redis.hkeys(keys.recipient_pending(account)) != []
        await asyncio.sleep(3.1)
        assert await events.sweep() >= 1
        got = [e for _, e in await listener.take(1, account=account)]
        assert [e["id"] for e in got] == [event["id"]]
        assert await redis.hgetall(keys.recipient_pending(account)) == {}
        with pytest.raises(TimeoutError):  # nothing more of this account
            await listener.take(1, timeout=1.0, account=account)
    finally:
        await listener.close()
        await redis.aclose()
        await bus.close()
