"""A rejected job's record: keyed as any job's (or by its bytes when its ids cannot be read),
written by the gate on a real Redis and a Redis Cluster (``backends``), read by
``job_story``; the job hash untouched, so the same id is processed again when it comes back."""

from __future__ import annotations

import asyncio

import pytest

from suppression import ids, keys
from suppression.gate import Counts
from suppression.history import job_story

pytestmark = pytest.mark.backends


def test_the_record_of_unreadable_jobs_is_a_stable_id_of_their_bytes():
    body = b'{"id": 12, "account_id": "acct}:x"'
    made = keys.unreadable_id(body)
    assert made == keys.unreadable_id(body) != keys.unreadable_id(body + b" ")
    assert made.startswith("unreadable-") and ids.is_id(made)
    assert len(made) == len("unreadable-") + keys.UNREADABLE_DIGITS
    assert keys.rejection_record(body, "acct_1", "job-1") == ("acct_1", "job-1")
    assert keys.rejection_record(body, "acct_1", None) == ("acct_1", made)
    assert keys.rejection_record(body, None, "job-1") == (keys.UNREADABLE_ACCOUNT, made)
    assert keys.rejection_record(body, "acct}:x", "job-1") == (keys.UNREADABLE_ACCOUNT, made)
    # on a Cluster the pseudo-account's keys share its hash tag like any account's
    assert keys.timeline(keys.UNREADABLE_ACCOUNT, made).startswith("outbox:{acct:unreadable}:")


async def test_a_rejection_is_found_with_its_reason_and_leaves_the_job_open(gate, redis, names):
    account, job = names.account("acct_rej"), names.job("bad-sms")
    await gate.record_rejection(account, job, reason="invalid",
                                detail="to: not a possible phone number: '123'")
    story = await job_story(redis, account, job)
    assert story is not None
    assert (story["status"], story["reason"]) == ("rejected", "invalid")
    assert story["timeline"][0]["detail"] == "to: not a possible phone number: '123'"
    assert await redis.exists(keys.job(account, job)) == 0  # no status: not "done"
    assert 3500 < await redis.ttl(keys.timeline(account, job)) <= 3600
    # the same id published again, fixed: claimed and sent, its timeline continues
    decision = await gate.pre_send(account, job, owner="w", redelivered=False, expired=False,
                                   attempt=1, address=names.email("ok@example.com"))
    assert decision.verdict == "send"
    await gate.post_send(account, job, status="sent", attempt=1, provider="smtp",
                         counts=Counts(sends=1))
    story = await job_story(redis, account, job)
    assert story["status"] == "sent"
    assert [e["status"] for e in story["timeline"]] == ["rejected", "sent"]


async def test_a_rejected_duplicate_does_not_change_a_sent_jobs_status(gate, redis, names):
    account, job = names.account("acct_rej"), names.job("dup")
    await gate.pre_send(account, job, owner="w", redelivered=False, expired=False, attempt=1,
                        address=names.email("a@example.com"))
    await gate.post_send(account, job, status="sent", attempt=1, counts=Counts(sends=1))
    await asyncio.sleep(0.01)  # entries are ordered by time (ms): a later one, for sure
    await gate.record_rejection(account, job, reason="invalid", detail="an email job on the "
                                "sms queue")
    story = await job_story(redis, account, job)
    assert story["status"] == "sent"
    assert [e["status"] for e in story["timeline"]] == ["sent", "rejected"]


@pytest.mark.parametrize(("state", "reopened"), [("failed", True), ("rejected", True),
                                                 ("sent", False), ("S", False),
                                                 ("delivered", False)])
async def test_a_replay_reopens_only_jobs_never_handed_over(gate, redis, names, state,
                                                           reopened):
    account, job = names.account("acct_rej"), names.job(f"re-{state}")
    await redis.hset(keys.job(account, job), mapping={"st": state, "a": "1", "o": "w#1"})
    assert await gate.reopen(account, job, actor="ops", reason="bug fixed") == state
    held = await redis.hget(keys.job(account, job), "st")
    assert (held is None) == reopened
    decision = await gate.pre_send(account, job, owner="w2", redelivered=False, expired=False,
                                   attempt=1, address=names.email("b@example.com"))
    assert (decision.verdict == "send") == reopened
    story = await job_story(redis, account, job)
    assert story["timeline"][0]["status"] == "replayed"
    assert story["timeline"][0]["detail"] == f"ops: bug fixed (was {state})"


async def test_a_reopened_job_keeps_the_entry_its_hash_held(gate, redis, names):
    """A job hash holding its newest timeline entry itself (``et``, ``ed``, ``ea``: the
    compact storage) has it moved to the list before its status goes: the story still ends
    ``failed`` before ``replayed``."""
    account, job = names.account("acct_rej"), names.job("held")
    await redis.hset(keys.job(account, job), mapping={
        "st": "failed", "a": "3", "r": "error", "et": "1764000000000",
        "ed": "unexpected error on delivery 3", "ea": "3"})
    assert await gate.reopen(account, job, actor="ops", reason="bug fixed") == "failed"
    held = await redis.hmget(keys.job(account, job), ["st", "et", "ed", "ea"])
    assert held == [None, None, None, None]
    story = await job_story(redis, account, job)
    first, second = story["timeline"]
    assert (first["status"], first["reason"], first["detail"], first["attempt"]) == (
        "failed", "error", "unexpected error on delivery 3", 3)
    assert first["at"] == "2025-11-24T16:00:00.000Z"
    assert second["status"] == "replayed"
