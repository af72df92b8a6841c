"""A job may only send as its account's verified domains (OUTBOX_REQUIRE_VERIFIED_SENDERS),
through the real worker, RabbitMQ, Redis, an aiosmtpd relay and the Twilio stand-in: a sender
the account may not use ends the job ``rejected`` before any claim, with its status event,
timeline entry and log line, and nothing reaches the relay."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from outbox.devsinks.twilio_api import TwilioStandIn
from sender.service import make_redis
from suppression.domains import DomainStore, Publishing
from suppression.history import job_story
from suppression.reputation import Policy
from suppression.sealed import Sealer
from suppression.store import AccountStore
from tests.integration.helpers import collect, email_job, events, publish, running_worker

pytestmark = pytest.mark.integration

SID, TOKEN, FROM = "AC" + "7" * 32, "senders-token", "+15005550006"


async def verify(settings: Any, account: str, domain: str, *, dmarc: bool = True,
                 ed25519: bool = False) -> dict[str, Any]:
    """``domain`` verified for ``account`` as `outbox domains verify` would record it
    (its DKIM key found; a DMARC record or not)."""
    redis = make_redis(settings)
    store = DomainStore(redis, Sealer(settings.secret_keys), Publishing("outbox.example"))
    try:
        await store.add(account, domain, ed25519=ed25519)
        record = await store.get(account, domain)
        findings = {"at": int(time.time()),
                    "dkim": [{"selector": k["selector"], "found": "match"}
                             for k in record["keys"]],
                    "spf": {"found": "missing"}, "return_path": {"found": "not_configured"},
                    "dmarc": {"policy": "none" if dmarc else None}}
        shown = await store.record_verification(account, domain, findings)
        assert shown["verified"] is True
        return await store.show(account, domain)
    finally:
        await redis.aclose()


async def configure(settings: Any, account: str, **fields: Any) -> None:
    redis = make_redis(settings)
    try:
        await AccountStore(redis, Policy()).configure(account, **fields)
    finally:
        await redis.aclose()


async def outcomes(settings: Any, amqp_url: str, jobs: list[dict[str, Any]]
                   ) -> dict[str, dict[str, Any]]:
    """Each job's status event, by id, from one worker run."""
    async with running_worker(settings):
        await publish(amqp_url, jobs)
        got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= len(jobs))
    return {e["id"]: e for e in events(got)}


@pytest.mark.backends
async def test_unverified_from_is_rejected_and_a_subdomain_of_a_verified_one_is_sent(
        make_settings, smtp_server, amqp_url, names, caplog):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, require_verified_senders=True)
    account = names.account("acct_shop")
    domain = f"shop-{names.suffix}.example"  # the cluster is shared: a domain of its own
    await verify(settings, account, domain)
    caplog.set_level(logging.INFO, logger="outbox.pipeline")
    bad = email_job(id=names.job("spoof"), account_id=account, **{"from": "Bank <x@bank.example>"})
    sub = email_job(id=names.job("sub"), account_id=account,
                    **{"from": f"Shop News <news@mail.{domain}>"})
    same = email_job(id=names.job("same"), account_id=account,
                     **{"from": f"shop@{domain.upper()}"})
    got = await outcomes(settings, amqp_url, [bad, sub, same])

    assert (got[bad["id"]]["status"], got[bad["id"]]["reason"]) == \
        ("rejected", "sender_not_verified")
    assert "bank.example" in got[bad["id"]]["detail"]
    assert got[sub["id"]]["status"] == "sent" and got[same["id"]]["status"] == "sent"
    assert sorted(r for _, rcpts, _ in recorder.messages for r in rcpts) == \
        sorted([sub["to"], same["to"]])  # nothing of the spoofed job reached the relay
    redis = make_redis(settings)
    story = await job_story(redis, account, bad["id"])
    await redis.aclose()
    assert story is not None
    assert [(t["status"], t["reason"]) for t in story["timeline"]] == \
        [("rejected", "sender_not_verified")]
    line = next(r for r in caplog.records if getattr(r, "job_id", None) == bad["id"])
    assert line.status == "rejected" and line.reason == "sender_not_verified"


async def test_another_accounts_verified_domain_is_rejected(make_settings, smtp_server,
                                                            amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, require_verified_senders=True)
    await verify(settings, "acct_owner", "owner.example")
    theirs = email_job(account_id="acct_owner", **{"from": "o@owner.example"})
    mine = email_job(account_id="acct_other", **{"from": "o@owner.example"})
    got = await outcomes(settings, amqp_url, [theirs, mine])
    assert got[theirs["id"]]["status"] == "sent"
    assert (got[mine["id"]]["status"], got[mine["id"]]["reason"]) == \
        ("rejected", "sender_not_verified")
    assert [r for _, rcpts, _ in recorder.messages for r in rcpts] == [theirs["to"]]


async def test_a_foreign_reply_to_is_rejected_unless_the_account_allows_any(
        make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, require_verified_senders=True)
    await verify(settings, "acct_strict", "strict.example")
    await verify(settings, "acct_loose", "loose.example")
    await configure(settings, "acct_loose", allow_any_reply_to=True)
    jobs = {
        "strict-foreign": email_job(account_id="acct_strict", reply_to="help@gmail.example",
                                    **{"from": "s@strict.example"}),
        "strict-own": email_job(account_id="acct_strict", reply_to="help@strict.example",
                                **{"from": "s@strict.example"}),
        "loose-foreign": email_job(account_id="acct_loose", reply_to="help@gmail.example",
                                   **{"from": "l@loose.example"}),
        "loose-from": email_job(account_id="acct_loose", reply_to="help@gmail.example",
                                **{"from": "l@gmail.example"}),  # the from rule stays
    }
    got = await outcomes(settings, amqp_url, list(jobs.values()))
    status = {name: (got[j["id"]]["status"], got[j["id"]].get("reason"))
              for name, j in jobs.items()}
    assert status == {"strict-foreign": ("rejected", "sender_not_verified"),
                      "strict-own": ("sent", None), "loose-foreign": ("sent", None),
                      "loose-from": ("rejected", "sender_not_verified")}
    assert "reply_to gmail.example" in got[jobs["strict-foreign"]["id"]]["detail"]
    assert len(recorder.messages) == 2


async def test_marketing_from_a_domain_without_dmarc_is_refused_unless_allowed(
        make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, require_verified_senders=True,
                             consent_mode="opt_out")
    info = {"business_name": "Shop Ltd", "address": "1 Queen's Road", "contact_email":
            "hi@x.example", "contact_phone": "+85221234567"}
    for account, domain in (("acct_nodmarc", "nodmarc.example"),
                            ("acct_allowed", "allowed.example")):
        await verify(settings, account, domain, dmarc=False)
        await configure(settings, account, **info)
    await configure(settings, "acct_allowed", allow_missing_dmarc=True)
    offer = email_job(account_id="acct_nodmarc", category="marketing",
                      **{"from": "n@nodmarc.example"})
    receipt = email_job(account_id="acct_nodmarc", **{"from": "n@nodmarc.example"})
    allowed = email_job(account_id="acct_allowed", category="marketing",
                        **{"from": "a@allowed.example"})
    got = await outcomes(settings, amqp_url, [offer, receipt, allowed])
    assert (got[offer["id"]]["status"], got[offer["id"]]["reason"]) == \
        ("rejected", "dmarc_missing")
    assert got[receipt["id"]]["status"] == "sent"  # transactional mail needs no DMARC
    assert got[allowed["id"]]["status"] == "sent"
    assert len(recorder.messages) == 2


@pytest.fixture
async def twilio_base():
    api = TwilioStandIn(account_sid=SID, auth_token=TOKEN, callback_delay=60)
    yield await api.start()
    await api.close()


def sms_job(job_id: str, **fields: Any) -> dict[str, Any]:
    return {"v": 1, "id": job_id, "account_id": "acct_sms", "channel": "sms",
            "category": "transactional", "to": "+85291230001", "body": "Code 4821", **fields}


async def test_an_sms_from_an_unconfigured_sender_is_rejected(make_settings, amqp_url,
                                                              twilio_base):
    settings = make_settings(twilio_account_sid=SID, twilio_auth_token=TOKEN, twilio_from=FROM,
                             twilio_api_base=twilio_base, require_verified_senders=True)
    await configure(settings, "acct_sms", sms_senders="+852 6123 4567, MG" + "1" * 32)
    jobs = [sms_job("sms-unconfigured", **{"from": "+85260000000"}),
            sms_job("sms-configured", **{"from": "+85261234567"}),
            sms_job("sms-service", **{"from": "MG" + "1" * 32}),
            sms_job("sms-default"),  # Outbox's own OUTBOX_TWILIO_FROM
            sms_job("sms-own", **{"from": FROM})]  # naming it
    got = await outcomes(settings, amqp_url, jobs)
    assert (got["sms-unconfigured"]["status"], got["sms-unconfigured"]["reason"]) == \
        ("rejected", "sender_not_verified")
    assert "+85260000000" in got["sms-unconfigured"]["detail"]
    assert {got[j]["status"] for j in ("sms-configured", "sms-service", "sms-default",
                                       "sms-own")} == {"sent"}


async def test_with_the_check_off_any_sender_goes(make_settings, smtp_server, amqp_url):
    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, require_verified_senders=False)
    job = email_job(**{"from": "x@unverified.example"})
    got = await outcomes(settings, amqp_url, [job])
    assert got[job["id"]]["status"] == "sent" and len(recorder.messages) == 1



async def test_the_identity_settings_through_the_cli(cli, capsys, redis_url):
    import redis.asyncio as aioredis

    from suppression import keys

    assert await cli("accounts", "configure", "acct_cli", "--sms-senders",
                     "6123 4567, #ShopHK", "--allow-any-reply-to", "true") == 0
    capsys.readouterr()
    assert await cli("accounts", "show", "acct_cli", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["identity"] == {"sms_senders": ["+85261234567", "#ShopHK"],
                                 "allow_any_reply_to": True, "allow_missing_dmarc": False}
    assert shown["sending_domains"] == []
    # the verified domains, as `domains verify` records them for the pre-send script
    client = aioredis.Redis.from_url(redis_url)
    await client.hset(keys.senders("acct_cli"), mapping={"shop.example": "1", "b.example": "0"})
    await client.aclose()
    assert await cli("accounts", "show", "acct_cli") == 0
    assert "sending domains: b.example (no DMARC), shop.example" in capsys.readouterr().out
    assert await cli("accounts", "show", "acct_cli", "--json") == 0
    assert json.loads(capsys.readouterr().out)["sending_domains"] == [
        {"domain": "b.example", "dmarc": False}, {"domain": "shop.example", "dmarc": True}]
    with pytest.raises(SystemExit) as refused:  # argparse refuses it
        await cli("accounts", "configure", "acct_cli", "--allow-missing-dmarc", "maybe")
    assert refused.value.code == 2


async def test_a_message_from_a_verified_domain_arrives_dkim_signed_with_its_keys(
        make_settings, smtp_server, amqp_url):
    """The worker signs with the active keys of the account's verified domain covering the
    From domain (sender/signing_keys.py over the domain store); dkimpy, which shares no code
    with the signer, verifies both signatures against the records `domains add` printed."""
    from tests.dkim_verifiers import dkimpy_results

    smtp_url, recorder = smtp_server
    settings = make_settings(smtp_url=smtp_url, require_verified_senders=True)
    shown = await verify(settings, "acct_signed", "signed.example", ed25519=True)
    records = {r["name"]: r["value"] for r in shown["records"] if "_domainkey" in r["name"]}
    job = email_job(account_id="acct_signed", **{"from": "Shop <s@news.signed.example>"})
    got = await outcomes(settings, amqp_url, [job])
    assert got[job["id"]]["status"] == "sent"
    [(_, _, received)] = recorder.messages
    assert received.count(b"DKIM-Signature:") == 2 and b"d=signed.example;" in received
    assert dkimpy_results(received, records) == [True, True]
