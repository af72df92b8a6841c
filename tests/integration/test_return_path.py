"""The bounce VERP return path on the aligned subdomain (issue 18, item 3), through the real
worker, an aiosmtpd relay, the real bounce listener, RabbitMQ and Redis.

* A job from a domain whose return path (``bounces.<domain>`` CNAME to the bounce domain) the
  last verification found goes out with MAIL FROM ``bounce+...@bounces.<domain>`` (the same
  local part and signature as at the bounce domain, so SPF aligns with From), and a bounce to
  that address is believed and counted, in both VERP forms.
* The same address at a return-path domain not verified for the job's account (another
  account's, an unknown one) is refused at RCPT, and nothing changes.
* Without a verified return path (CNAME missing or pointing elsewhere, or the From domain not
  verified) the envelope stays at ``OUTBOX_BOUNCE_DOMAIN``.
"""

from __future__ import annotations

import re
import time
from typing import Any

import aiosmtplib
import pytest

from sender.service import make_redis
from suppression.domains import DomainStore
from suppression.store import SuppressionStore
from suppression.verp import parse_ref, verp_address, verp_ref
from tests.integration.helpers import collect, events, running_worker
from tests.integration.test_bounces_listener import (
    DOMAIN,
    KEY,
    _settings,
    counted,
    listening,
    sent_job,
    smtp_send,
    unchanged,
)
from tests.integration.test_verp_trust import ISSUE_JOB, rates, to_verp

pytestmark = pytest.mark.integration

SHOP, OTHER = "shop.example", "other.example"


async def verify(settings: Any, account: str, domain: str, *,
                 cname: str | None = DOMAIN) -> dict[str, Any]:
    """``domain`` verified for ``account`` as `outbox domains verify` records it: its DKIM
    keys found, a DMARC record, and ``bounces.<domain>`` a CNAME to ``cname`` (None: no
    CNAME found)."""
    redis = make_redis(settings)
    store = DomainStore.from_settings(redis, settings)
    name = f"bounces.{domain}"
    return_path = ({"name": name, "found": "missing", "target": None} if cname is None else
                   {"name": name, "target": cname, "found": "ok" if cname == DOMAIN
                    else "wrong"})
    try:
        await store.add(account, domain)
        record = await store.get(account, domain)
        shown = await store.record_verification(account, domain, {
            "at": int(time.time()),
            "dkim": [{"selector": k["selector"], "found": "match"} for k in record["keys"]],
            "spf": {"found": "ok"}, "dmarc": {"policy": "none"}, "return_path": return_path})
        assert shown["verified"] is True
        return shown
    finally:
        await redis.aclose()


def settings_for(make_settings: Any, smtp_url: str) -> Any:
    """The bounce listener's settings, senders checked as in production."""
    return _settings(make_settings, smtp_url, require_verified_senders=True)


async def bounced_at_return_path(settings: Any, amqp_url: str, recorder: Any, port: int,
                                 account: str, job_id: str | None = None) -> str:
    """Send a job of ``account`` from ``news@mail.shop.example``, bounce it to its envelope
    sender and check the bounce is believed and counted; the envelope sender."""
    rcpt = "bob@example.net"
    fields: dict[str, Any] = {"account_id": account, "to": rcpt,
                              "from": f"Shop <news@mail.{SHOP}>"}
    job, verp = await sent_job(settings, amqp_url, recorder,
                               **({"id": job_id} if job_id else {}), **fields)
    [(_, _, received)] = [m for m in recorder.messages if m[0] == verp]
    assert f"d={SHOP};".encode() in received  # signed as the same domain: both align
    async with listening(settings, port) as registry, running_worker(settings) as worker:
        await smtp_send(port, [verp], to_verp(job["id"], rcpt, verp))
        [bounced] = events(await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1))
        entries = await SuppressionStore(worker.redis).check(rcpt, account_id=account)
        counts = await rates(worker.redis, account)
    assert (bounced["id"], bounced["account_id"], bounced["status"], bounced["reason"]) == (
        job["id"], account, "bounced", "userunknown")
    assert [(e["reason"], e["scope"]) for e in entries] == [("hard_bounce", "global")]
    assert counts == (1, 1, 0)
    assert counted(registry, "accepted") == 1 and counted(registry, "unattributed") == 0
    return verp


async def test_a_job_from_a_domain_with_a_verified_return_path_bounces_there(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = settings_for(make_settings, smtp_url)
    shown = await verify(settings, "acct_rp", SHOP)
    assert shown["return_path"] == f"bounces.{SHOP}"
    verp = await bounced_at_return_path(settings, amqp_url, recorder, unused_tcp_port,
                                        "acct_rp")
    local, _, domain = verp.rpartition("@")
    job_id = local.split("+")[2]
    assert domain == f"bounces.{SHOP}"
    assert re.fullmatch(rf"bounce\+acct_rp\+{job_id}\+[a-z2-7]{{16}}", local)
    # the same local part and signature it would have had at the bounce domain
    assert verp_address("acct_rp", job_id, DOMAIN, KEY) == f"{local}@{DOMAIN}"


async def test_a_referenced_address_at_the_return_path_bounces_there_too(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    smtp_url, recorder = smtp_server
    settings = settings_for(make_settings, smtp_url)
    await verify(settings, "acct_1042", SHOP)
    verp = await bounced_at_return_path(settings, amqp_url, recorder, unused_tcp_port,
                                        "acct_1042", ISSUE_JOB)
    assert verp == f"bounce+r={verp_ref('acct_1042', ISSUE_JOB, KEY)}@bounces.{SHOP}"
    assert parse_ref(verp, f"bounces.{SHOP}") is not None


async def test_the_same_address_at_a_return_path_not_of_its_account_is_refused(
        make_settings, smtp_server, amqp_url, unused_tcp_port):
    """acct_rp's signed addresses (both forms) at acct_x's verified return path, at a domain
    nobody verified, at a domain whose CNAME was not found, and a wrongly signed one at its
    own return path: each refused at RCPT (550 5.1.1), nothing kept, nothing changed."""
    smtp_url, recorder = smtp_server
    settings = settings_for(make_settings, smtp_url)
    await verify(settings, "acct_rp", SHOP)
    await verify(settings, "acct_x", OTHER)
    await verify(settings, "acct_rp", "nocname.example", cname=None)
    job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_rp",
                               to="bob@example.net", **{"from": f"news@{SHOP}"})
    _, long_verp = await sent_job(settings, amqp_url, recorder, id=ISSUE_JOB,
                                  account_id="acct_rp", to="bob@example.net",
                                  **{"from": f"news@{SHOP}"})
    assert verp.endswith(f"@bounces.{SHOP}") and long_verp.startswith("bounce+r=")
    local, long_local = verp.rpartition("@")[0], long_verp.rpartition("@")[0]
    forged = [f"{local}@bounces.{OTHER}", f"{long_local}@bounces.{OTHER}",
              f"{local}@bounces.nobody.example", f"{local}@bounces.nocname.example",
              f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@bounces.{SHOP}",
              f"{local}@{SHOP}"]
    report = to_verp(job["id"], "bob@example.net", verp)
    async with listening(settings, unused_tcp_port) as registry, \
            unchanged(settings, amqp_url):
        for address in forged:
            with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
                await smtp_send(unused_tcp_port, [address], report)
            [reply] = refused.value.recipients
            assert (reply.code, reply.message[:5]) == (550, "5.1.1"), address
    assert await collect(amqp_url, "outbox.dead", lambda m: len(m) >= 1, timeout=1) == []
    assert counted(registry, "refused") == len(forged) and counted(registry, "accepted") == 0


async def test_without_a_verified_return_path_the_envelope_stays_at_the_bounce_domain(
        make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = settings_for(make_settings, smtp_url)
    await verify(settings, "acct_rp", "nocname.example", cname=None)
    await verify(settings, "acct_rp", "elsewhere.example", cname="bounces.someone.example")
    await verify(settings, "acct_rp", SHOP)
    for sender in ("news@nocname.example", "news@elsewhere.example"):
        job, verp = await sent_job(settings, amqp_url, recorder, account_id="acct_rp",
                                   **{"from": sender})
        assert verp == verp_address("acct_rp", job["id"], DOMAIN, KEY), sender
    # senders not checked: a From domain the account has not verified keeps it too
    unchecked = _settings(make_settings, smtp_url)
    job, verp = await sent_job(unchecked, amqp_url, recorder, account_id="acct_y",
                               **{"from": f"news@{SHOP}"})  # acct_rp's domain, not acct_y's
    assert verp == verp_address("acct_y", job["id"], DOMAIN, KEY)
