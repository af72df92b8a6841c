"""A job's timeline and a recipient's history, written by the gate's real Lua on a real Redis
(in the round trips it makes anyway) and read by suppression.history; on a single Redis and
on a Redis Cluster (``backends``: each test's account and addresses are its own)."""

from __future__ import annotations

import re

import pytest

from suppression import keys
from suppression.gate import Counts
from suppression.history import job_story, recipient_history
from suppression.store import SuppressionStore

pytestmark = pytest.mark.backends
A = ""  # this test's account and names (the autouse fixture below)
N = None
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def _own_names(names, monkeypatch):
    monkeypatch.setitem(globals(), "A", names.account("acct_story"))
    monkeypatch.setitem(globals(), "N", names)


def mail(address: str) -> str:
    return N.email(address)


async def claim(gate, job_id, *, account=None, address=None, **kw):
    return await gate.pre_send(account or A, job_id, owner="w", redelivered=False,
                               expired=False, attempt=kw.pop("attempt", 1),
                               address=address or mail("ana@example.com"), **kw)


async def test_sent_then_delivered_is_told_in_order_with_its_evidence(gate, redis):
    assert (await claim(gate, "j1")).verdict == "send"
    await gate.post_send(A, "j1", status="sent", attempt=1, provider="smtp",
                         provider_message_id="<j1@x>", counts=Counts(sends=1),
                         note="250 2.0.0 queued as ABC")
    await gate.post_send(A, "j1", status="delivered", attempt=0, provider="ses",
                         provider_message_id="<j1@x>", reason="delivered",
                         note="smtp; 250 ok", event_id="e1")
    story = await job_story(redis, A, "j1")
    assert story["status"] == "delivered"
    steps = [(s["status"], s["attempt"], s["provider"], s["detail"]) for s in story["timeline"]]
    # a provider report keeps the job's attempt, not the event's 0
    assert steps == [("sent", 1, "smtp", "250 2.0.0 queued as ABC"),
                     ("delivered", 1, "ses", "smtp; 250 ok")]
    assert all(ISO.match(s["at"]) for s in story["timeline"])
    assert story["timeline"][0]["provider_message_id"] == "<j1@x>"
    # the same event again changes nothing, the timeline included
    await gate.post_send(A, "j1", status="delivered", attempt=0, provider="ses",
                         event_id="e1")
    assert len((await job_story(redis, A, "j1"))["timeline"]) == 2
    # kept as long as the idempotency record: in it (its entries fit the compact hash)
    assert await redis.exists(keys.timeline(A, "j1")) == 0
    ttl = await redis.ttl(keys.job(A, "j1"))
    assert 3500 < ttl <= 3600


async def test_a_deferral_then_a_send_shows_both_attempts(gate, redis):
    await claim(gate, "j2")
    await gate.post_send(A, "j2", status="R", attempt=1, provider="smtp",
                         reason="networkerror", note="connection refused")
    await claim(gate, "j2", attempt=2)
    await gate.post_send(A, "j2", status="sent", attempt=2, provider="smtp",
                         counts=Counts(sends=1))
    story = await job_story(redis, A, "j2")
    assert [(s["status"], s["attempt"], s["reason"]) for s in story["timeline"]] == [
        ("deferred", 1, "networkerror"), ("sent", 2, None)]
    assert story["timeline"][0]["detail"] == "connection refused"


async def test_refusals_are_told_by_the_pre_send_script_itself(gate, redis):
    await SuppressionStore(redis).add(mail("left@example.com"), channel="email",
                                      reason="unsubscribe", account_id=A)
    d = await claim(gate, "j3", address=mail("LEFT@example.com"))
    assert d.verdict == "suppressed"
    story = await job_story(redis, A, "j3")
    assert story["status"] == "suppressed"
    assert [(s["status"], s["reason"]) for s in story["timeline"]] == [
        ("suppressed", "unsubscribe")]
    d = await gate.pre_send(A, "j4", owner="w", redelivered=False, expired=True, attempt=1,
                            address=mail("ana@example.com"))
    assert (await job_story(redis, A, "j4"))["timeline"][0]["detail"] == "past not_after"
    # a redelivery of a refused job adds nothing
    await claim(gate, "j3", address=mail("left@example.com"))
    assert len((await job_story(redis, A, "j3"))["timeline"]) == 1


async def test_unknown_job_has_no_story(redis):
    assert await job_story(redis, A, "nope") is None


async def test_history_newest_first_bounded_per_account_and_across(gate, redis, monkeypatch):
    monkeypatch.setattr(keys, "HISTORY_KEEP", 5)
    for i in range(7):
        await claim(gate, f"h{i}", address=mail("Bob@Example.com"))
        await gate.post_send(A, f"h{i}", status="sent", attempt=1, counts=Counts(sends=1))
    await claim(gate, "other-1", account=N.account("acct_other"), address=mail("bob@example.com"))
    await claim(gate, "elsewhere", address=mail("carol@example.com"))
    rows = await recipient_history(redis, mail("bob@EXAMPLE.com"), account_id=A, limit=100)
    assert [r["id"] for r in rows] == ["h6", "h5", "h4", "h3", "h2"]  # bounded at 5
    assert {r["status"] for r in rows} == {"sent"}
    assert all(ISO.match(r["first_seen"]) and r["address"] == mail("bob@example.com")
               for r in rows)
    across = await recipient_history(redis, mail("bob@example.com"), limit=3)
    assert [(r["account_id"], r["id"], r["status"]) for r in across] == [
        (N.account("acct_other"), "other-1", "sending"), (A, "h6", "sent"),
        (A, "h5", "sent")]
    assert await redis.zcard(keys.global_history("email", mail("bob@example.com"))) == 5
    assert await recipient_history(redis, mail("nobody@example.com")) == []


async def test_sms_history_by_any_spelling_of_the_number(gate, redis):
    number = N.phone()
    await claim(gate, "s1", channel="sms", address=f"{number[:4]} {number[4:8]} {number[8:]}")
    rows = await recipient_history(redis, number, account_id=A)
    assert [(r["id"], r["channel"], r["address"]) for r in rows] == [("s1", "sms", number)]
