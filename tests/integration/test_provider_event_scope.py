"""A provider event reaches only the recipient its job was sent to, and only a job that was
sent: the real webhook server, the real worker, RabbitMQ, Redis and an aiosmtpd relay.

A signed Mailgun hard bounce naming a sent job but another address, or naming a job that
ended ``rejected`` (never handed over), is answered 200 (Mailgun does not retry it), counted
in ``outbox_webhook_events_total`` as ``ignored_recipient`` / ``ignored_not_sent``, logged
once, and changes nothing: no suppression, no count, no status. The same bounce for the job's
own recipient is applied (the control). An event put on ``outbox.events`` directly, past the
webhook server, is checked again by the worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from itertools import count
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from sender.bus import Bus
from sender.provider_events import ProviderEvent
from sender.service import started_worker
from suppression import keys
from suppression.gate import Gate
from suppression.store import SuppressionStore
from tests.integration.helpers import collect, email_job, events, publish, running_app
from tests.unit.test_provider_mailgun import signature as mailgun_signature
from tests.unit.test_provider_mailgun import signed as mailgun_signed

pytestmark = pytest.mark.integration
KEY = "key-scope-test-0123456789abcdef"
ACCOUNT = "acct_scope"
_tokens = count()


@pytest.fixture
async def loop(make_settings, smtp_server, unused_tcp_port):
    """The webhook server and a worker (its metrics in a registry of their own) sending to a
    local relay; marketing jobs need no consent record (opt_out), so one without sender
    information is claimed, then ends ``rejected``."""
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, mailgun_signing_key=KEY, consent_mode="opt_out")
    registry = CollectorRegistry()
    async with (running_app(settings, unused_tcp_port) as base,
                started_worker(settings, registry)):
        yield base, registry, recorder


def _bounce(job_id: str, recipient: str) -> bytes:
    """A signed, fresh Mailgun permanent failure of ``job_id`` for ``recipient``."""
    body = mailgun_signed("failed_permanent", KEY)
    data = body["event-data"]
    data["id"] = f"scope-{job_id}-{recipient}"
    data["recipient"] = recipient
    data["user-variables"] = {"outbox_account": ACCOUNT, "outbox_job": job_id}
    data["message"]["headers"]["message-id"] = f"{job_id}@outbox.localhost"
    token, ts = f"{next(_tokens):050d}", str(int(time.time()))
    body["signature"] = {"timestamp": ts, "token": token,
                         "signature": mailgun_signature(ts, token, KEY)}
    return json.dumps(body).encode()


async def _post(base: str, body: bytes) -> int:
    async with (aiohttp.ClientSession() as session,
                session.post(f"{base}/webhooks/mailgun", data=body,
                             headers={"Content-Type": "application/json"}) as r):
        return r.status


async def _metric(base: str, result: str) -> float:
    """``outbox_webhook_events_total{provider="mailgun",type="bounced",result=...}``."""
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as r:
        text = await r.text()
    line = (f'outbox_webhook_events_total{{provider="mailgun",result="{result}",'
            f'type="bounced"}}')
    found = [ln.split()[-1] for ln in text.splitlines() if ln.startswith(line)]
    return float(found[0]) if found else 0.0


async def _facts(redis_url: str, job_id: str, *addresses: str) -> dict[str, Any]:
    """What an applied bounce would change: the job's status, the account's counters, every
    suppression entry of the addresses (global and the account's)."""
    client = Redis.from_url(redis_url)
    try:
        store = SuppressionStore(client)
        job = await Gate(client, idempotency_ttl=60).job_state(ACCOUNT, job_id)
        rep = await client.hgetall(keys.reputation(ACCOUNT, "email"))
        entries = {a: await store.check(a, account_id=ACCOUNT) for a in addresses}
    finally:
        await client.aclose()
    return {"status": job.get("st"), "hard": rep.get(b"H", b"0"), "entries": entries}


async def _sent_job(amqp_url: str, **fields: Any) -> tuple[dict[str, Any], str]:
    job = email_job(account_id=ACCOUNT, **fields)
    await publish(amqp_url, [job])
    [status] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
    return job, status["status"]


async def _no_status(amqp_url: str) -> bool:
    return await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=3) == []


def _ignored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event ignored" in r.getMessage()]


async def test_a_provider_event_for_another_address_is_ignored(loop, amqp_url, redis_url,
                                                               caplog):
    base, _, _ = loop
    caplog.set_level(logging.WARNING)
    job, status = await _sent_job(amqp_url, to="bob-scope@example.com")
    assert status == "sent"
    before = await _facts(redis_url, job["id"], "eve-scope@example.com", job["to"])

    assert await _post(base, _bounce(job["id"], "eve-scope@example.com")) == 200
    assert await _no_status(amqp_url)
    assert await _facts(redis_url, job["id"], "eve-scope@example.com", job["to"]) == before
    assert before["entries"]["eve-scope@example.com"] == [] and before["status"] == "sent"
    assert await _metric(base, "ignored_recipient") == 1
    [line] = _ignored_lines(caplog)
    assert "mailgun bounced event ignored" in line and "another recipient" in line

    # the control: the same bounce for the job's own recipient is applied
    assert await _post(base, _bounce(job["id"], job["to"])) == 200
    [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
    assert (bounced["id"], bounced["status"]) == (job["id"], "bounced")
    after = await _facts(redis_url, job["id"], "eve-scope@example.com", job["to"])
    assert (after["status"], after["hard"]) == ("bounced", b"1")
    assert [e["reason"] for e in after["entries"][job["to"]]] == ["hard_bounce"]
    assert after["entries"]["eve-scope@example.com"] == []
    assert await _metric(base, "accepted") == 1


async def test_an_event_for_a_rejected_job_changes_nothing(loop, amqp_url, redis_url, caplog):
    base, _, recorder = loop
    caplog.set_level(logging.WARNING)
    job, status = await _sent_job(amqp_url, to="rita-scope@example.com", category="marketing")
    assert status == "rejected" and recorder.messages == []  # no sender information
    before = await _facts(redis_url, job["id"], job["to"])
    assert before["status"] == "rejected"

    assert await _post(base, _bounce(job["id"], job["to"])) == 200
    assert await _no_status(amqp_url)
    assert await _facts(redis_url, job["id"], job["to"]) == before
    assert before["entries"][job["to"]] == [] and before["hard"] == b"0"
    assert await _metric(base, "ignored_not_sent") == 1
    [line] = _ignored_lines(caplog)
    assert "was not sent (status rejected)" in line


async def test_the_worker_checks_again_events_that_bypass_the_webhook(loop, amqp_url,
                                                                      redis_url):
    """Events published on ``outbox.events`` directly (an older webhook server, or a job that
    moved since the webhook asked): the worker acks them, counts them and changes nothing."""
    _, registry, _ = loop
    sent, _ = await _sent_job(amqp_url, to="sam-scope@example.com")
    rejected, status = await _sent_job(amqp_url, to="ray-scope@example.com",
                                       category="marketing")
    assert status == "rejected"
    before = {j["id"]: await _facts(redis_url, j["id"], j["to"], "eve-scope@example.com")
              for j in (sent, rejected)}
    base = {"provider": "mailgun", "type": "bounced", "channel": "email",
            "provider_message_id": None, "message_id": None, "kind": "hard",
            "reason": "userunknown", "diagnostic": "550 5.1.1", "at": "2026-01-01T00:00:00Z",
            "account_id": ACCOUNT}
    bus = Bus(amqp_url, retry_tiers=(1, 2))
    await bus.connect()
    try:
        for n, (job, recipient) in enumerate(((sent, "eve-scope@example.com"),
                                              (rejected, rejected["to"]))):
            event = ProviderEvent(**base, recipient=recipient, job_id=job["id"],
                                  event_id=f"direct-{n}")
            await bus.publish_to_queue("outbox.events", event.to_json())
    finally:
        await bus.close()

    def counted(result: str) -> float:
        return registry.get_sample_value("outbox_provider_events_total", {
            "provider": "mailgun", "type": "bounced", "result": result}) or 0.0

    deadline = time.monotonic() + 15
    while counted("ignored_recipient") + counted("ignored_not_sent") < 2:
        assert time.monotonic() < deadline, "the worker did not take the events"
        await asyncio.sleep(0.1)
    assert (counted("ignored_recipient"), counted("ignored_not_sent"), counted("applied")) == \
        (1, 1, 0)
    assert await _no_status(amqp_url)
    assert await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1, timeout=1) == []
    for job in (sent, rejected):
        assert await _facts(redis_url, job["id"], job["to"], "eve-scope@example.com") == \
            before[job["id"]]

