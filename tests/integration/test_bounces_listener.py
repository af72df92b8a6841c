"""``outbox bounces`` against real RabbitMQ and Redis, over real SMTP conversations.

Genuine reports still work: a DSN to the job's signed VERP address ends the job ``bounced``
and suppresses the recipient; without VERP, a DSN quoting our Message-ID of a job sent to that
recipient is believed as that recipient's word for that account only (``reported``); an ARF
report to the VERP address ends the job ``complained``; a VERP address signed with a
rotated-out key is still believed. (Long ids and trust: ``test_verp_trust.py``.)

Each attack is the attacker's own SMTP conversation, and the test asserts NOTHING changed: the
Redis db is byte-for-byte the same (no suppression, no account state, no job state), no event
on ``outbox.events``, no status event; what was not believed is kept on ``outbox.dead``,
counted and logged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from sender.bus import Bus
from sender.service import make_redis
from suppression.store import SuppressionStore
from suppression.verp import verify_verp
from tests.integration.helpers import collect, email_job, events, publish, running_worker
from webhooks.bounces import ListenerConfig, start_bounce_listener

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "data" / "reports"
DOMAIN = "bounces.outbox.example"
MSGID_DOMAIN = "mail.outbox.example"
KEY = "current-key-0123456789abcdef"
OLD_KEY = "retired-key-0123456789abcdef"
ATTACKER = "mailer-daemon@mx.attacker.example"


def _settings(make_settings: Any, smtp_url: str, **overrides: Any) -> Any:
    base = {"smtp_url": smtp_url, "bounce_domain": DOMAIN, "message_id_domain": MSGID_DOMAIN,
            "secret_key": KEY, "bounces_burst": 10_000}
    return make_settings(**{**base, **overrides})


@asynccontextmanager
async def listening(settings: Any, port: int) -> AsyncIterator[CollectorRegistry]:
    """The listener on 127.0.0.1:``port`` with its own bus and Redis; yields its metrics."""
    registry = CollectorRegistry()
    bus = Bus.from_settings(settings)
    await bus.connect()
    redis = make_redis(settings)
    server = await start_bounce_listener(ListenerConfig.from_settings(settings), bus=bus,
                                         redis=redis, host="127.0.0.1", port=port,
                                         registry=registry)
    try:
        yield registry
    finally:
        server.close()
        await server.wait_closed()
        await bus.close()
        await redis.aclose()


def counted(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("outbox_bounces_total", {"result": result}) or 0.0


async def sent_job(settings: Any, amqp_url: str, recorder: Any,
                   **fields: Any) -> tuple[dict[str, Any], str]:
    """Send one real job through the worker; (job, the envelope sender it went out with)."""
    job = email_job(**fields)
    async with running_worker(settings):
        await publish(amqp_url, [job])
        [sent] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
    assert (sent["id"], sent["status"]) == (job["id"], "sent")
    envelope_from, _, _ = recorder.messages[-1]
    return job, envelope_from


async def snapshot(redis_url: str) -> dict[bytes, bytes | None]:
    """Every key of the test's Redis db with its serialised value."""
    redis = Redis.from_url(redis_url)
    try:
        return {k: await redis.dump(k) for k in sorted(await redis.keys("*"))}
    finally:
        await redis.aclose()


async def nothing_published(amqp_url: str) -> bool:
    """No event for the worker and no status event."""
    return (await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []
            and await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=0.5)
            == [])


def dsn(*, job_id: str, recipient: str, account: str | None = None,
        msgid_domain: str = MSGID_DOMAIN, report_id: str = "4ZkQ1") -> bytes:
    """A Postfix DSN for ``recipient`` quoting ``<job_id@msgid_domain>`` (and
    ``X-Outbox-Account`` when given)."""
    raw = (DATA / "postfix-dsn.eml").read_text()
    raw = raw.replace("01JD6Y3M9Q0B8ZP6X2N4K7R1TC@mail.outbox.example",
                      f"01JD6Y3M9Q0B8ZP6X2N4K7R1TC@{msgid_domain}")
    raw = raw.replace("01JD6Y3M9Q0B8ZP6X2N4K7R1TC", job_id).replace("bob@example.net", recipient)
    raw = raw.replace("20261125020211.4ZkQ1@", f"20261125020211.{report_id}@")
    if account:
        raw = raw.replace("Subject: Spring offer\n", f"Subject: Spring offer\nX-Outbox-Account: "
                          f"{account}\n")
    return raw.encode()


async def smtp_send(port: int, recipients: list[str], data: bytes,
                    sender: str = ATTACKER) -> Any:
    return await aiosmtplib.send(data, sender=sender, recipients=recipients,
                                 hostname="127.0.0.1", port=port)


# --- genuine reports ---------------------------------------------------------------------


async def test_a_dsn_to_the_signed_verp_address_bounces_the_job_and_suppresses(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_7",
                               to="bob@example.net")
    assert re.fullmatch(rf"bounce\+acct_7\+{job['id']}\+[a-z2-7]{{16}}@{DOMAIN}", verp)
    assert verify_verp(verp, [KEY], DOMAIN) == ("acct_7", job["id"])
    async with listening(settings, unused_tcp_port) as registry, \
            running_worker(settings) as worker:
        report = dsn(job_id=job["id"], recipient="bob@example.net")
        await smtp_send(unused_tcp_port, [verp], report)
        [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        await smtp_send(unused_tcp_port, [verp], report)  # the relay repeats itself
        entries = await SuppressionStore(worker.redis).check("bob@example.net",
                                                             account_id="acct_7")
        again = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=1)
        rep = await worker.redis.hgetall("outbox:{acct:acct_7}:rep:email")
    assert (bounced["id"], bounced["status"], bounced["reason"]) == (job["id"], "bounced",
                                                                     "userunknown")
    assert [(e["reason"], e["scope"]) for e in entries] == [("hard_bounce", "global")]
    assert again == [] and rep[b"H"] == b"1"  # the repeat is applied once
    assert counted(registry, "accepted") == 2 and counted(registry, "unattributed") == 0


async def test_without_verp_a_dsn_quoting_our_message_id_is_its_recipient_s_word_only(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    """Quoting our Message-ID proves only that someone who saw the message wrote the report:
    believed for the job's own recipient, as a suppression of that account alone."""
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, _ = await sent_job(settings, amqp_url, recorder, account_id="acct_q",
                            to="carol@example.org")
    async with listening(settings, unused_tcp_port) as registry:
        # the same quoted Message-ID, but naming someone the job was not sent to
        before = await snapshot(settings.redis_url.get_secret_value())
        await smtp_send(unused_tcp_port, [f"postmaster@{DOMAIN}"],
                        dsn(job_id=job["id"], recipient="victim@example.org", account="acct_q"))
        assert await nothing_published(amqp_url)
        assert await snapshot(settings.redis_url.get_secret_value()) == before
        [kept] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
        assert "not sent to victim@example.org" in kept.headers["x-outbox-reason"]
        async with running_worker(settings) as worker:
            await smtp_send(unused_tcp_port, [f"postmaster@{DOMAIN}"],
                            dsn(job_id=job["id"], recipient="carol@example.org",
                                account="acct_q"))
            status = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1,
                                   timeout=3)
            entries = await SuppressionStore(worker.redis).check("carol@example.org",
                                                                 account_id="acct_q")
            victim = await SuppressionStore(worker.redis).check("victim@example.org")
    assert status == []  # the job's status is not the forgeable report's to change
    assert [(e["reason"], e["scope"]) for e in entries] == [("reported", "account")]
    assert victim == []
    assert (counted(registry, "quoted"), counted(registry, "unattributed")) == (1, 1)


@pytest.mark.parametrize("to_verp", [True, False])
async def test_an_arf_complaint_marks_the_job_complained_only_through_verp(
        make_settings, smtp_server, amqp_url, unused_tcp_port, to_verp):
    """To the signed VERP address: ``complained``, counted, global entry. To a fixed address,
    quoting the Message-ID (as a feedback loop sends it): the account's own entry only."""
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_8",
                               to="user@example.com")
    assert b"X-Outbox-Account: acct_8" in recorder.messages[-1][2]
    report = (DATA / "arf-abuse.eml").read_bytes().replace(b"job-77", job["id"].encode())
    report = report.replace(b"Message-ID: <" + job["id"].encode(),
                            b"X-Outbox-Account: acct_8\nMessage-ID: <" + job["id"].encode())
    async with listening(settings, unused_tcp_port) as registry, \
            running_worker(settings) as worker:
        await smtp_send(unused_tcp_port, [verp if to_verp else f"fbl@{DOMAIN}"], report,
                        sender="fbl@example.com")
        status = events(await collect(amqp_url, "outbox.status",
                                      lambda m: len(events(m)) >= 1,
                                      timeout=30 if to_verp else 3))
        entries = await SuppressionStore(worker.redis).check("user@example.com",
                                                             account_id="acct_8")
        rep = await worker.redis.hgetall("outbox:{acct:acct_8}:rep:email")
    if to_verp:
        assert [(s["id"], s["status"]) for s in status] == [(job["id"], "complained")]
        assert [(e["reason"], e["scope"]) for e in entries] == [("complaint", "global")]
        assert rep[b"C"] == b"1" and counted(registry, "accepted") == 1
    else:
        assert status == []
        assert [(e["reason"], e["scope"]) for e in entries] == [("reported", "account")]
        assert rep.get(b"C", b"0") == b"0" and counted(registry, "quoted") == 1


async def test_a_verp_address_signed_with_a_rotated_out_key_is_still_believed(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    job, verp = await sent_job(_settings(make_settings, smtp_url, secret_key=OLD_KEY), amqp_url,
                               recorder, account_id="acct_r", to="dave@example.net")
    rotated = _settings(make_settings, smtp_url, secret_key=f"{KEY},{OLD_KEY}")
    async with listening(rotated, unused_tcp_port) as registry, running_worker(rotated):
        await smtp_send(unused_tcp_port, [verp],
                        dsn(job_id=job["id"], recipient="dave@example.net"))
        [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
    assert (bounced["id"], bounced["status"]) == (job["id"], "bounced")
    assert counted(registry, "accepted") == 1


# --- attacks: nothing changes --------------------------------------------------------------


@asynccontextmanager
async def unchanged(settings: Any, amqp_url: str) -> AsyncIterator[None]:
    """Assert that the block changes nothing in Redis and publishes nothing."""
    before = await snapshot(settings.redis_url.get_secret_value())
    yield
    assert await nothing_published(amqp_url)
    assert await snapshot(settings.redis_url.get_secret_value()) == before


async def test_forged_bounces_naming_arbitrary_addresses_suppress_no_one(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, _ = await sent_job(settings, amqp_url, recorder, account_id="acct_7")
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        for i in range(20):
            forged = [  # no attribution; a made-up job; our real job, but not this recipient
                dsn(job_id=f"made-up-{i}", recipient=f"victim{i}@example.org"),
                dsn(job_id=f"made-up-{i}", recipient=f"victim{i}@example.org",
                    account="acct_7"),
                dsn(job_id=job["id"], recipient=f"victim{i}@example.org", account="acct_7"),
                dsn(job_id=job["id"], recipient=job["to"], account="acct_7",
                    msgid_domain="elsewhere.example"),  # not our Message-ID domain
            ][i % 4]
            await smtp_send(unused_tcp_port, [f"postmaster@{DOMAIN}"], forged)
    assert counted(registry, "unattributed") == 20 and counted(registry, "accepted") == 0
    kept = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 20)
    assert len(kept) == 20
    assert all(m.headers["x-outbox-reason"].startswith("bounces listener: unattributed")
               for m in kept)


async def test_sixty_forged_bounces_to_unsigned_verp_addresses_do_not_block_the_account(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url, early_bounce_volume=1, min_bounce_volume=1)
    await sent_job(settings, amqp_url, recorder, account_id="acct_7")
    async with listening(settings, unused_tcp_port) as registry, running_worker(settings):
        before = await snapshot(settings.redis_url.get_secret_value())
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=unused_tcp_port) as client:
            for i in range(60):
                verp = f"bounce+acct_7+anything-{i}@{DOMAIN}"
                await client.sendmail(ATTACKER, [verp], dsn(
                    job_id=f"anything-{i}", recipient=f"user{i}@example.com", account="acct_7",
                    report_id=f"r{i}"))
        status = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=2)
        after = await snapshot(settings.redis_url.get_secret_value())
    assert status == [] and after == before
    assert b"outbox:{acct:acct_7}:rep:email" in after  # the real send is counted, no bounce
    assert counted(registry, "unattributed") == 60


async def test_a_wrongly_signed_verp_address_changes_nothing(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_7",
                               to="bob@example.net")
    sig = verp.split("+")[3].split("@")[0]
    other_job = verp.replace(job["id"], "other-job")  # a genuine signature, another job
    guessed = verp.replace(sig, "a" * len(sig))
    report = dsn(job_id=job["id"], recipient="bob@example.net", account="acct_7")
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        for address in (other_job, guessed, verp.replace(f"+{sig}", "")):
            await smtp_send(unused_tcp_port, [address], report)
        # a genuine VERP address names its own recipient: it cannot vouch for anyone else's
        await smtp_send(unused_tcp_port, [verp], dsn(job_id=job["id"],
                                                     recipient="victim@example.org"))
    kept = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 4)
    reasons = [m.headers["x-outbox-reason"] for m in kept]
    assert sum("has no correct signature" in r for r in reasons) == 3
    assert sum("not sent to victim@example.org" in r for r in reasons) == 1
    assert counted(registry, "unattributed") == 4


async def test_a_recipient_outside_the_bounce_domain_is_refused_at_rcpt(
        make_settings, smtp_server, amqp_url, unused_tcp_port, caplog):
    smtp_url, _ = smtp_server
    settings = _settings(make_settings, smtp_url)
    caplog.set_level(logging.WARNING, "outbox.bounces")
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            await smtp_send(unused_tcp_port, ["anyone@gmail.com"], b"Subject: hi\r\n\r\nx\r\n")
    [(_, reply)] = [(r.code, r.message) for r in refused.value.recipients]
    assert refused.value.recipients[0].code == 550 and reply.startswith("5.1.1")
    assert await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1, timeout=1) == []
    assert counted(registry, "refused") == 1
    assert [r.getMessage() for r in caplog.records if "550 5.1.1" in r.getMessage()]


async def test_an_oversize_message_is_refused_and_not_kept(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, _ = smtp_server
    settings = _settings(make_settings, smtp_url, bounces_max_bytes=64 * 1024)
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await smtp_send(unused_tcp_port, [f"postmaster@{DOMAIN}"], big)
    assert refused.value.code == 552
    assert await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1, timeout=1) == []
    assert counted(registry, "refused") == 1


async def test_a_non_report_is_kept_capped_counted_and_logged_once(
        make_settings, smtp_server, amqp_url, unused_tcp_port, caplog):
    smtp_url, _ = smtp_server
    settings = _settings(make_settings, smtp_url)
    caplog.set_level(logging.INFO, "outbox.bounces")
    body = b"From: someone@example.org\r\nSubject: out of office\r\n\r\n" + (
        b"I am away. " * 90 + b"\r\n") * 300  # about 300 KB: under SIZE, over the kept cap
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        caplog.clear()
        await smtp_send(unused_tcp_port, [f"anyone@{DOMAIN}"], body,
                        sender="someone@example.org")
    [kept] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
    reason = kept.headers["x-outbox-reason"]
    assert reason.startswith(f"bounces listener: not_report [first 262144 of {len(body)} "
                             "bytes kept]: an auto-reply")
    assert kept.body == body[:262144] and kept.headers["x-outbox-size"] == len(body)
    assert kept.headers["x-outbox-rcpt-to"] == f"anyone@{DOMAIN}"
    assert counted(registry, "not_report") == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not_report" in warnings[0].getMessage()


async def test_a_peer_over_its_rate_gets_421_and_is_counted(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, _ = smtp_server
    settings = _settings(make_settings, smtp_url, bounces_burst=4, bounces_rate=0.001)
    message = b"Subject: hi\r\n\r\nx\r\n"
    async with listening(settings, unused_tcp_port) as registry:
        for _ in range(2):  # a connection and a message each: 4 tokens
            await smtp_send(unused_tcp_port, [f"a@{DOMAIN}"], message)
        with pytest.raises(aiosmtplib.SMTPConnectResponseError) as refused:
            await smtp_send(unused_tcp_port, [f"a@{DOMAIN}"], message)
    assert refused.value.code == 421
    assert counted(registry, "deferred") == 1 and counted(registry, "not_report") == 2


async def test_the_worker_does_not_apply_a_listener_event_without_account_and_job(
        make_settings, smtp_server, amqp_url):
    """Defence in depth: were such an event ever on outbox.events, it suppresses no one."""
    import json

    smtp_url, _ = smtp_server
    settings = _settings(make_settings, smtp_url)
    event = {"provider": "smtp", "type": "bounced", "recipient": "victim@example.org",
             "provider_message_id": None, "message_id": None, "job_id": None, "kind": "hard",
             "reason": "userunknown", "diagnostic": "550 5.1.1", "at": "2026-01-01T00:00:00Z",
             "event_id": "e1", "account_id": None}
    bus = Bus(amqp_url, retry_tiers=settings.retry_tiers)
    await bus.connect()
    try:
        async with running_worker(settings) as worker:
            await bus.publish_to_queue("outbox.events", json.dumps(event).encode())
            [dead] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
            entries = await SuppressionStore(worker.redis).check("victim@example.org")
    finally:
        await bus.close()
    assert "names no account and job is not believed" in dead.headers["x-outbox-reason"]
    assert entries == []


# --- genuine bounces made by a real Postfix (tests/data/bounces/mail/postfix) ---------------

MAIL = Path(__file__).resolve().parents[1] / "data" / "bounces" / "mail"


@pytest.mark.parametrize(("case", "to_verp"), [("nouser", True), ("msgid-only", False)])
async def test_a_genuine_postfix_bounce_is_applied_as_far_as_its_proof_goes(
        make_settings, smtp_server, amqp_url, unused_tcp_port, case, to_verp):
    """To the signed VERP address: the job ends ``bounced``, the address is suppressed
    globally. Quoting only our Message-ID: the account's own ``reported`` entry, the job as
    it was. Both keep the evidence."""
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, id=f"job-pf-{case}",
                               account_id="acct_pf", to="nouser@refuse.example.net")
    # the refusing host's domain was .test (RFC 2606), which jobs may not name
    report = (MAIL / "postfix" / f"{case}.eml").read_bytes().replace(b"refuse.test",
                                                                    b"refuse.example.net")
    assert (verp.encode() in report) == to_verp  # made with the same key, domain and job
    async with listening(settings, unused_tcp_port) as registry, \
            running_worker(settings) as worker:
        await smtp_send(unused_tcp_port, [verp if to_verp else f"postmaster@{DOMAIN}"], report,
                        sender="MAILER-DAEMON@sender-relay.test")
        status = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1,
                                      timeout=30 if to_verp else 3))
        [entry] = await SuppressionStore(worker.redis).check("nouser@refuse.example.net",
                                                             account_id="acct_pf")
    if to_verp:
        assert [(s["id"], s["status"], s["reason"]) for s in status] == [
            (job["id"], "bounced", "userunknown")]
        assert (entry["reason"], entry["scope"]) == ("hard_bounce", "global")
    else:
        assert status == []
        assert (entry["reason"], entry["scope"]) == ("reported", "account")
        assert "no signed VERP address; from 127.0.0.1" in entry["detail"]
    assert entry["source"] == f"job:{job['id']}"
    report_id = re.search(rb"^Message-Id: (<[^>]+>)", report, re.M | re.I).group(1).decode()
    assert entry["detail"].startswith("smtp; 550 5.1.1 <nouser@refuse.example.net>: Recipient "
                                      "address rejected")
    assert f"report {report_id}" in entry["detail"] and "| received 20" in entry["detail"]
    assert counted(registry, "accepted" if to_verp else "quoted") == 1


async def test_an_auto_reply_to_our_verp_address_changes_nothing(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_v",
                               to="bob@example.org")
    reply = (MAIL / "docs" / "autoreply-rfc3834.eml").read_bytes().replace(
        b"job-d-ar", job["id"].encode())
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        await smtp_send(unused_tcp_port, [verp], reply, sender="bob@example.org")
    [kept] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
    assert "not_report" in kept.headers["x-outbox-reason"]
    assert "auto-reply" in kept.headers["x-outbox-reason"]
    assert counted(registry, "not_report") == 1 and counted(registry, "accepted") == 0
