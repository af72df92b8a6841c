"""A relay's DSN, sent to `outbox bounces` at the job's VERP address, ends the job `bounced`
and suppresses the recipient; an ARF report ends it `complained`; a non-report is kept."""

from __future__ import annotations

import json
from pathlib import Path

import aiosmtplib
import pytest

from sender.bus import Bus
from suppression.store import SuppressionStore
from tests.integration.helpers import collect, email_job, events, publish, running_worker
from webhooks.bounces import start_bounce_listener

pytestmark = pytest.mark.integration
DATA = Path(__file__).resolve().parents[1] / "data" / "reports"


def _dsn_for(job: dict, verp: str) -> bytes:
    raw = (DATA / "postfix-dsn.eml").read_text()
    raw = raw.replace("bounce+acct_7+01JD6Y3M9Q0B8ZP6X2N4K7R1TC@bounces.outbox.example", verp)
    raw = raw.replace("01JD6Y3M9Q0B8ZP6X2N4K7R1TC", job["id"])
    return raw.replace("bob@example.net", job["to"]).encode()


async def test_a_dsn_bounces_the_job_and_suppresses_the_recipient(make_settings, smtp_server,
                                                                   amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, bounce_domain="bounces.outbox.example")
    job = email_job(account_id="acct_7", to="bob@example.net")
    bus = Bus(amqp_url, retry_tiers=settings.retry_tiers)
    await bus.connect()
    listener = await start_bounce_listener(bus, "127.0.0.1", unused_tcp_port)
    try:
        async with running_worker(settings) as worker:
            await publish(amqp_url, [job])
            [sent] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
            assert sent["status"] == "sent"
            [(envelope_from, _, _)] = recorder.messages
            assert envelope_from == f"bounce+acct_7+{job['id']}@bounces.outbox.example"

            await aiosmtplib.send(_dsn_for(job, envelope_from), sender="mailer-daemon@mx.acme.example",
                                  recipients=[envelope_from], hostname="127.0.0.1",
                                  port=unused_tcp_port)
            [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
            entries = await SuppressionStore(worker.redis).check("bob@example.net",
                                                                 account_id="acct_7")

            await aiosmtplib.send(b"From: someone@example.org\r\nSubject: out of office\r\n"
                                  b"\r\nI am away.\r\n", sender="someone@example.org",
                                  recipients=[envelope_from], hostname="127.0.0.1",
                                  port=unused_tcp_port)
            [kept] = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1)
    finally:
        listener.close()
        await bus.close()
    assert (bounced["id"], bounced["status"], bounced["reason"]) == (job["id"], "bounced",
                                                                     "userunknown")
    assert [(e["reason"], e["scope"]) for e in entries] == [("hard_bounce", "global")]
    assert "not a delivery status notification" in kept.headers["x-outbox-reason"]


async def test_an_arf_complaint_marks_the_job_complained(make_settings, smtp_server, amqp_url,
                                                         unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url)
    job = email_job(account_id="acct_8", to="user@example.com")
    bus = Bus(amqp_url, retry_tiers=settings.retry_tiers)
    await bus.connect()
    listener = await start_bounce_listener(bus, "127.0.0.1", unused_tcp_port)
    try:
        async with running_worker(settings):
            await publish(amqp_url, [job])
            await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1)
            [(_, _, original)] = recorder.messages
            assert b"X-Outbox-Account: acct_8" in original
            report = (DATA / "arf-abuse.eml").read_bytes().replace(b"job-77", job["id"].encode())
            report = report.replace(b"Message-ID: <" + job["id"].encode(),
                                    b"X-Outbox-Account: acct_8\nMessage-ID: <"
                                    + job["id"].encode())
            await aiosmtplib.send(report, sender="fbl@example.com",
                                  recipients=["fbl@outbox.example"], hostname="127.0.0.1",
                                  port=unused_tcp_port)
            [complained] = events(await collect(amqp_url, "outbox.status",
                                                lambda m: len(m) >= 1))
    finally:
        listener.close()
        await bus.close()
    assert (complained["id"], complained["status"]) == (job["id"], "complained")
    assert json.dumps(complained)  # a plain JSON event
