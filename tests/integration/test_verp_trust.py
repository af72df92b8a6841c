"""VERP addresses for every valid id, and what a report proves (issue 25, items 2 and 6), through
the real worker, relay stand-in, bounce listener, RabbitMQ and Redis.

* With a bounce domain set, jobs whose ids are too long for the readable VERP form (the
  issue's ``order-7f3c2a9e-…`` of ``acct_1042``, and 128-character ids, the most the job schema
  allows) are sent, not ``rejected``, with a ``bounce+r=<ref>`` envelope sender within 64
  octets, and a DSN to that address ends the job ``bounced``: counted, globally suppressed.
* A report that only quotes our Message-ID and ``X-Outbox-Account`` (anyone who received the
  message can write it) changes no rate, no global entry and no job status; it leaves the
  account's own ``reported`` entry for that recipient, with its evidence.
* A report to a wrongly signed referenced address changes nothing at all.
"""

from __future__ import annotations

from typing import Any

import pytest

from suppression.store import SuppressionStore
from suppression.verp import LOCAL_MAX, REF_LENGTH, parse_ref, verp_ref
from tests.integration.helpers import collect, email_job, events, publish, running_worker
from tests.integration.test_bounces_listener import (
    DOMAIN,
    KEY,
    MSGID_DOMAIN,
    OLD_KEY,
    _settings,
    counted,
    dsn,
    listening,
    sent_job,
    smtp_send,
    unchanged,
)

pytestmark = pytest.mark.integration
ISSUE_ACCOUNT, ISSUE_JOB = "acct_1042", "order-7f3c2a9e-1b4d-4c8e-9a61-2f0b7d5e3c11"
QUOTED_VERP = "bounce+acct_7+01JD6Y3M9Q0B8ZP6X2N4K7R1TC@bounces.outbox.example"


def longest(base: str, suffix: str) -> str:
    """A valid id of 128 characters, the most ``suppression.ids.SAFE_ID`` allows."""
    return f"{base}-{suffix}-".ljust(128, "x")


def to_verp(job_id: str, recipient: str, verp: str) -> bytes:
    """A Postfix DSN of ``job_id`` for ``recipient`` as a relay returns it to ``verp``."""
    return dsn(job_id=job_id, recipient=recipient).replace(QUOTED_VERP.encode(), verp.encode())


async def rates(redis: Any, account: str) -> tuple[int, int, int]:
    """Sends, hard bounces and complaints counted in the account's e-mail window."""
    rep = await redis.hgetall(f"outbox:{{acct:{account}}}:rep:email")
    return tuple(int(rep.get(f, b"0")) for f in (b"S", b"H", b"C"))  # type: ignore[return-value]


async def bounced_through_verp(settings: Any, amqp_url: str, recorder: Any, port: int,
                               account: str, job_id: str, rcpt: str = "bob@example.net") -> None:
    """Send the job, check its envelope sender, bounce it to that address and check the
    bounce is attributed and counted."""
    job, verp = await sent_job(settings, amqp_url, recorder, id=job_id, account_id=account,
                               to=rcpt)  # sent_job asserts status "sent"
    local = verp.rpartition("@")[0]
    assert len(local.encode()) <= LOCAL_MAX and verp.endswith(f"@{DOMAIN}")
    assert parse_ref(verp, DOMAIN) == verp_ref(account, job_id, KEY)
    assert len(local) == len("bounce+r=") + REF_LENGTH
    async with listening(settings, port) as registry, running_worker(settings) as worker:
        await smtp_send(port, [verp], to_verp(job_id, rcpt, verp))
        [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        entries = await SuppressionStore(worker.redis).check(rcpt, account_id=account)
        counts = await rates(worker.redis, account)
    assert (bounced["id"], bounced["account_id"], bounced["status"], bounced["reason"]) == (
        job_id, account, "bounced", "userunknown")
    assert [(e["reason"], e["scope"], e["source"]) for e in entries] == [
        ("hard_bounce", "global", f"job:{job_id}")]
    assert counts == (1, 1, 0)
    assert counted(registry, "accepted") == 1 and counted(registry, "unattributed") == 0


async def test_the_issue_s_job_is_sent_with_a_bounce_domain_and_its_bounce_attributed(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    await bounced_through_verp(_settings(make_settings, smtp_url), amqp_url, recorder,
                               unused_tcp_port, ISSUE_ACCOUNT, ISSUE_JOB)


@pytest.mark.backends
async def test_the_longest_ids_are_sent_and_their_bounce_attributed_on_redis_and_cluster(
        make_settings, smtp_server, amqp_url, unused_tcp_port, names):
    """128-character account and job ids; on a Redis Cluster the ref record (a global key)
    and the account's keys live in different slots. (The cluster is shared and never flushed:
    the ids and the recipient, globally suppressed at the end, are this test's own.)"""
    smtp_url, recorder = smtp_server
    await bounced_through_verp(
        _settings(make_settings, smtp_url), amqp_url, recorder, unused_tcp_port,
        longest("acct", names.suffix), longest("job", names.suffix),
        names.email("bob@example.net"))


async def test_a_report_quoting_only_our_message_id_changes_no_rate_and_no_global_entry(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    """The forged report of issue 25 item 2: to ``postmaster@<bounce domain>``, quoting the
    job's Message-ID, X-Outbox-Account and real recipient. With one send, a single counted
    hard bounce would block the account (volumes of 1): it stays active."""
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url, early_bounce_volume=1, min_bounce_volume=1)
    job, _ = await sent_job(settings, amqp_url, recorder, account_id="acct_q",
                            to="carol@example.org")
    forged = dsn(job_id=job["id"], recipient="carol@example.org", account="acct_q")
    async with listening(settings, unused_tcp_port) as registry, \
            running_worker(settings) as worker:
        for _ in range(2):  # repeated: applied once
            await smtp_send(unused_tcp_port, [f"postmaster@{DOMAIN}"], forged)
        status = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=3)
        store = SuppressionStore(worker.redis)
        own = await store.check("carol@example.org", account_id="acct_q")
        elsewhere = await store.check("carol@example.org", account_id="acct_other")
        counts = await rates(worker.redis, "acct_q")
        state = await worker.redis.hget("outbox:{acct:acct_q}:state", "state")
        job_status = await worker.redis.hget(f"outbox:{{acct:acct_q}}:job:{job['id']}", "st")
        # what the entry does: acct_q's next mail to carol is not sent; another account's is
        await publish(amqp_url, [email_job(id="q-next", account_id="acct_q",
                                           to="carol@example.org"),
                                 email_job(id="o-next", account_id="acct_other",
                                           to="carol@example.org")])
        after = {e["id"]: (e["status"], e["reason"]) for e in events(await collect(
            amqp_url, "outbox.status", lambda m: len(m) >= 2))}
    assert after == {"q-next": ("suppressed", "reported"), "o-next": ("sent", None)}
    assert status == [] and job_status == b"sent"
    assert counts == (1, 0, 0) and state in (None, b"active")
    assert elsewhere == []  # no global entry: another account may still write to carol
    [entry] = own
    assert (entry["scope"], entry["reason"], entry["actor"], entry["source"]) == (
        "account", "reported", "recipient", f"job:{job['id']}")
    assert entry["detail"].startswith("smtp; 550 5.1.1")
    assert (f"quoted Message-ID <{job['id']}@{MSGID_DOMAIN}> and X-Outbox-Account acct_q, "
            "no signed VERP address; from 127.0.0.1 (MAIL FROM "
            "mailer-daemon@mx.attacker.example, RCPT TO postmaster@") in entry["detail"]
    assert counted(registry, "quoted") == 2 and counted(registry, "accepted") == 0


async def test_a_genuine_bounce_after_a_forged_quote_still_counts(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    """A forged quote first must not make the real bounce to the VERP address a "repeat"."""
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, id=ISSUE_JOB,
                               account_id=ISSUE_ACCOUNT, to="bob@example.net")
    async with listening(settings, unused_tcp_port) as registry, \
            running_worker(settings) as worker:
        await smtp_send(unused_tcp_port, [f"postmaster@{DOMAIN}"],
                        dsn(job_id=ISSUE_JOB, recipient="bob@example.net",
                            account=ISSUE_ACCOUNT))
        await smtp_send(unused_tcp_port, [verp], to_verp(ISSUE_JOB, "bob@example.net", verp))
        [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        counts = await rates(worker.redis, ISSUE_ACCOUNT)
    assert (bounced["id"], bounced["status"]) == (ISSUE_JOB, "bounced") and counts == (1, 1, 0)
    assert counted(registry, "quoted") == 1 and counted(registry, "accepted") == 1


async def test_a_report_to_a_wrongly_signed_referenced_address_changes_nothing(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = _settings(make_settings, smtp_url)
    job, verp = await sent_job(settings, amqp_url, recorder, id=ISSUE_JOB,
                               account_id=ISSUE_ACCOUNT, to="bob@example.net")
    ref = parse_ref(verp)
    assert ref is not None
    forged = [
        f"bounce+r={'a' * REF_LENGTH}@{DOMAIN}",  # guessed
        f"bounce+r={verp_ref(ISSUE_ACCOUNT, ISSUE_JOB, 'not-our-key-0123456789')}@{DOMAIN}",
        f"bounce+r={verp_ref(ISSUE_ACCOUNT, ISSUE_JOB + 'x', KEY)}@{DOMAIN}",  # unsent job
        f"bounce+r={ref[:-1]}@{DOMAIN}",  # cut short
        f"bounce+r={ref[:-1]}{'b' if ref[-1] != 'b' else 'c'}@{DOMAIN}",  # one character off
    ]
    report = to_verp(ISSUE_JOB, "bob@example.net", verp)
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        for address in forged:
            await smtp_send(unused_tcp_port, [address], report)
        # the real address names its own recipient: it cannot vouch for anyone else
        await smtp_send(unused_tcp_port, [verp], to_verp(ISSUE_JOB, "victim@example.org", verp))
    kept = await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 6)
    reasons = [m.headers["x-outbox-reason"] for m in kept]
    assert sum("has no correct signature" in r for r in reasons) == 5
    assert sum("not sent to victim@example.org" in r for r in reasons) == 1
    assert counted(registry, "unattributed") == 6 and counted(registry, "accepted") == 0


async def test_a_referenced_address_made_with_a_rotated_out_key_is_still_believed(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    old = _settings(make_settings, smtp_url, secret_key=OLD_KEY)
    job, verp = await sent_job(old, amqp_url, recorder, id=ISSUE_JOB, account_id=ISSUE_ACCOUNT,
                               to="dave@example.net")
    assert parse_ref(verp) == verp_ref(ISSUE_ACCOUNT, ISSUE_JOB, OLD_KEY)
    report = to_verp(ISSUE_JOB, "dave@example.net", verp)
    for keys, believed in ((KEY, False), (f"{KEY},{OLD_KEY}", True)):
        settings = _settings(make_settings, smtp_url, secret_key=keys)
        async with listening(settings, unused_tcp_port) as registry, running_worker(settings):
            await smtp_send(unused_tcp_port, [verp], report)
            status = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1,
                                          timeout=30 if believed else 3))
        assert [(s["id"], s["status"]) for s in status] == (
            [(ISSUE_JOB, "bounced")] if believed else [])
        assert counted(registry, "accepted" if believed else "unattributed") == 1
