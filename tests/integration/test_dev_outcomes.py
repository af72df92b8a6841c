"""Development that shows everything (issue 19 item 7), through the real services: the dev
SMTP sink's outcome addresses against the real worker and bounce listener (hard bounce, soft
bounce, a later DSN, a complaint); the Twilio stand-in keeping each SMS (text, segments,
encoding) and `outbox jobs show` saying them; its failing numbers; `outbox dev sms-reply`
posting a signed STOP the webhook server believes; `outbox enqueue` warning about UCS-2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from outbox.commands import _bounce_listener
from outbox.devsinks.smtp_sink import outcome_of, start_smtp_sink
from outbox.devsinks.twilio_api import TwilioStandIn
from tests.integration.helpers import (
    ROOT,
    collect,
    events,
    outbox_env,
    publish,
    recipient_events,
    run_outbox,
    running_app,
    running_worker,
)

pytestmark = pytest.mark.integration
SID, TOKEN = "AC" + "0" * 32, "dev-outcomes-token"


async def outbox_async(settings: Any, *argv: str, **env: str) -> tuple[int, str, str]:
    """:func:`run_outbox` while this loop serves (the webhook server the command posts to)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "outbox", *argv, env=outbox_env(settings, **env), cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return int(proc.returncode or 0), out.decode(), err.decode()


def email(job_id: str, to: str) -> dict[str, Any]:
    return {"v": 1, "id": job_id, "account_id": "acct_dev", "channel": "email",
            "category": "transactional", "to": to, "from": "Demo <shop@demo.example>",
            "subject": f"Test {job_id}", "text": "hello"}


def sms(job_id: str, to: str, body: str = "Your code is 4821", **more: Any) -> dict[str, Any]:
    return {"v": 1, "id": job_id, "account_id": "acct_dev", "channel": "sms",
            "category": "transactional", "to": to, "body": body, **more}


def test_outcomes_are_chosen_by_the_local_part_before_plus():
    assert [outcome_of(a) for a in ("bounce@x.example", "Bounce+7@y.example",
                                    "softbounce+a@z", "complaint@z", "bounce-later+2@z",
                                    "bouncer@z", "ana@example.com")] == [
        "bounce", "bounce", "softbounce", "complaint", "bounce-later", None, None]


async def test_the_sink_makes_hard_soft_later_bounces_and_a_complaint(
        make_settings, amqp_url, unused_tcp_port, tmp_path):
    settings = make_settings(smtp_url=f"smtp://127.0.0.1:{unused_tcp_port}",
                             bounce_domain="bounces.outbox.localhost", bounces_port=0,
                             http_host="127.0.0.1")
    server, sink = await start_smtp_sink(tmp_path / "mail", "127.0.0.1", unused_tcp_port)
    jobs = [email("dev-hard", "bounce@example.com"), email("dev-soft", "softbounce@example.com"),
            email("dev-later", "bounce-later@example.com"),
            email("dev-complaint", "complaint+1@example.com"), email("dev-ok", "ok@example.com")]
    try:
        async with _bounce_listener(settings) as port, running_worker(settings):
            sink.report_to = ("127.0.0.1", port)
            await publish(amqp_url, jobs)
            got = await collect(amqp_url, "outbox.status", lambda m: {
                (e["id"], e["status"]) for e in events(m)} >= {
                ("dev-hard", "bounced"), ("dev-soft", "deferred"), ("dev-later", "bounced"),
                ("dev-complaint", "complained"), ("dev-ok", "sent")}, timeout=30)
    finally:
        await sink.close()
        server.close()
        await server.wait_closed()
    seen = [(e["id"], e["status"], e["reason"]) for e in events(got)]
    assert ("dev-hard", "bounced", "userunknown") in seen
    assert ("dev-soft", "deferred", "mailboxfull") in seen
    assert [s for i, s, _ in seen if i == "dev-later"][:2] == ["sent", "bounced"]
    assert [s for i, s, _ in seen if i == "dev-complaint"][:2] == ["sent", "complained"]
    assert sink.reports_sent == 2 and sink.received == 3  # ok, later, complaint accepted
    later = run_outbox(settings, "jobs", "show", "acct_dev", "dev-later", "--json")
    assert json.loads(later.stdout)["status"] == "bounced"


@contextlib.asynccontextmanager
async def stand_in(sms_dir: Path) -> AsyncIterator[tuple[TwilioStandIn, str]]:
    twilio = TwilioStandIn(account_sid=SID, auth_token=TOKEN, sms_dir=sms_dir)
    base = await twilio.start()
    try:
        yield twilio, base
    finally:
        await twilio.close()


async def test_the_stand_in_keeps_each_sms_and_a_stop_reply_is_believed(
        make_settings, amqp_url, redis_url, unused_tcp_port, tmp_path):
    public = f"http://127.0.0.1:{unused_tcp_port}"
    async with stand_in(tmp_path / "sms") as (twilio, base):
        settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TOKEN,
                                 twilio_from="+15005550006", twilio_api_base=base,
                                 public_url=public)
        jobs = [sms("dev-sms-ucs2", "+85291234567", "Pick-up code 4821 – 取貨碼 4821"),
                sms("dev-sms-fail", "+85291230005")]
        async with running_app(settings, unused_tcp_port), running_worker(settings):
            await publish(amqp_url, jobs)
            got = await collect(amqp_url, "outbox.status", lambda m: {
                (e["id"], e["status"]) for e in events(m)} >= {
                ("dev-sms-ucs2", "delivered"), ("dev-sms-fail", "bounced")}, timeout=30)
            code, _, err = await outbox_async(
                settings, "dev", "sms-reply", "+85291234567", "STOP", "--account", "acct_dev",
                OUTBOX_PUBLIC_URL=public, OUTBOX_TWILIO_AUTH_TOKEN=TOKEN,
                OUTBOX_TWILIO_ACCOUNT_SID=SID, OUTBOX_TWILIO_FROM="+15005550006")
            assert code == 0, err
            stopped = await collect(amqp_url, "outbox.status",
                                    lambda m: len(recipient_events(m)) >= 1, timeout=20)
            await publish(amqp_url, [sms("dev-sms-after", "+85291234567")])
            after = await collect(amqp_url, "outbox.status", lambda m: any(
                e["id"] == "dev-sms-after" for e in events(m)), timeout=20)
    by_id = {(e["id"], e["status"]): e for e in events(got)}
    assert by_id[("dev-sms-fail", "bounced")]["reason"] == "userunknown"  # 30005
    kept = {r["to"]: r for r in twilio.sms}
    assert (kept["+85291234567"]["encoding"], kept["+85291234567"]["segments"]) == ("UCS-2", 1)
    assert kept["+85291234567"]["body"] == "Pick-up code 4821 – 取貨碼 4821"
    files = [json.loads(p.read_text()) for p in (tmp_path / "sms").glob("*.json")]
    assert {(f["to"], f["encoding"], f["status"]) for f in files} == {
        ("+85291234567", "UCS-2", "delivered"), ("+85291230005", "GSM-7", "undelivered")}
    shown = run_outbox(settings, "jobs", "show", "acct_dev", "dev-sms-ucs2")
    assert "SMS: 1 segment, UCS-2" in shown.stdout, shown.stdout + shown.stderr
    story = json.loads(run_outbox(settings, "jobs", "show", "acct_dev", "dev-sms-ucs2",
                                  "--json").stdout)
    assert (story["segments"], story["encoding"]) == (1, "UCS-2")
    [stop] = recipient_events(stopped)
    assert (stop["address"], stop["change"], stop["account_id"]) == (
        "+85291234567", "unsubscribed", "acct_dev")
    [last] = [e for e in events(after) if e["id"] == "dev-sms-after"]
    assert last["status"] == "suppressed"


async def test_a_wrong_signature_is_refused_and_changes_nothing(
        make_settings, amqp_url, unused_tcp_port):
    public = f"http://127.0.0.1:{unused_tcp_port}"
    settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TOKEN,
                             twilio_from="+15005550006", twilio_api_base="http://127.0.0.1:9",
                             public_url=public)
    async with running_app(settings, unused_tcp_port):
        code, _, err = await outbox_async(
            settings, "dev", "sms-reply", "+85291234567", "STOP", "--account", "acct_dev",
            OUTBOX_PUBLIC_URL=public, OUTBOX_TWILIO_AUTH_TOKEN="wrong",
            OUTBOX_TWILIO_ACCOUNT_SID=SID, OUTBOX_TWILIO_FROM="+15005550006")
    assert code == 1 and "answered 403" in err, err
    assert await collect(amqp_url, "outbox.events", lambda m: len(m) >= 1, timeout=1) == []


async def test_enqueue_warns_when_the_footer_or_a_character_makes_an_sms_ucs2(
        make_settings, amqp_url):
    settings = make_settings()
    done = run_outbox(settings, "accounts", "configure", "acct_dev", "--business-name",
                      "Demo Shop Ltd", "--address", "1 Queen's Road Central, Hong Kong",
                      "--contact-email", "hello@demo.example")
    assert done.returncode == 0, done.stderr
    lines = [sms("dev-mkt-1", "+85291234567", "Sale today", category="marketing"),
             sms("dev-quote-1", "+85291234567", "It’s ready"),
             sms("dev-plain-1", "+85291234567", "It's ready")]
    done = run_outbox(settings, "enqueue", "-", stdin="\n".join(json.dumps(j) for j in lines))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "published 3, invalid 0, failed 0 (2 with warnings)"
    warned = sorted(done.stderr.splitlines())  # published concurrently: in any order
    assert warned == [
        "<stdin>:1: warning: job dev-mkt-1: the marketing footer (sender information and the "
        "bilingual STOP line) makes the SMS UCS-2, 70 characters a segment (67 when split): "
        "2 segments (1 segment in GSM-7 without it)",
        "<stdin>:2: warning: job dev-quote-1: '’' (U+2019) at 2 not in GSM-7: the whole SMS is "
        "UCS-2, 70 characters a segment (67 when split): 1 segment (1 segment in GSM-7 "
        "without it)"]
    queued = await collect(amqp_url, "outbox.sms", lambda m: len(m) >= 2, timeout=10)
    queued += await collect(amqp_url, "outbox.sms.bulk", lambda m: len(m) >= 1, timeout=10)
    assert sorted(json.loads(m.body)["id"] for m in queued) == [
        "dev-mkt-1", "dev-plain-1", "dev-quote-1"]


async def test_the_client_logs_what_an_sms_costs_and_publishes_it(amqp_url, caplog):
    from sender.client import Outbox, sms_warnings

    job = sms("dev-client-mkt", "+85291234567", "Sale today", category="marketing")
    async with Outbox(amqp_url) as client:
        with caplog.at_level("WARNING", logger="outbox.client"):
            published = await client.publish(job)
            await client.publish(sms("dev-client-plain", "+85291234567", "Sale today"))
    notes = sms_warnings(published)
    assert len(notes) == 1 and "makes the SMS UCS-2" in notes[0] and "at least 1" in notes[0]
    logged = [r for r in caplog.records if r.name == "outbox.client"]
    assert [(r.levelname, r.getMessage()) for r in logged] == [
        ("WARNING", f"job dev-client-mkt: {notes[0]}")]
    assert logged[0].job_id == "dev-client-mkt"  # type: ignore[attr-defined]
    queued = await collect(amqp_url, "outbox.sms.bulk", lambda m: len(m) >= 1, timeout=10)
    assert [json.loads(m.body)["id"] for m in queued] == ["dev-client-mkt"]
