"""suppression.handover: the verdict of a job's record on a provider event for it."""

from __future__ import annotations

import uuid

import pytest

from suppression.gate import Gate
from suppression.handover import Handover, Query, check, check_all

A = "acct_ho"


@pytest.fixture
def gate(redis):
    return Gate(redis, idempotency_ttl=600)


async def _claim(gate: Gate, job: str, address: str, channel: str = "email") -> None:
    decision = await gate.pre_send(A, job, owner="w", redelivered=False, expired=False,
                                   attempt=1, channel=channel, address=address)
    assert decision.claimed


@pytest.mark.parametrize("status", ["S", "sent", "delivered", "soft_bounced", "bounced"])
async def test_a_job_handed_over_takes_events_for_its_own_recipient_only(gate, redis, status):
    await _claim(gate, "j1", "Bob@Example.com")
    if status != "S":  # "S": being sent, its event may overtake the post-send write
        await gate.post_send(A, "j1", status=status, attempt=1)
    assert (await check(redis, A, "j1", "bob@EXAMPLE.com", "email"))[0] is Handover.SENT
    for other in ("eve@example.com", "", None, "not an address"):
        verdict, why = await check(redis, A, "j1", other, "email")
        assert verdict is Handover.OTHER_RECIPIENT and verdict.ignored, why


@pytest.mark.parametrize("status", ["rejected", "suppressed", "failed", "blocked", "R"])
async def test_a_job_never_handed_over_takes_no_event(gate, redis, status):
    await _claim(gate, "j2", "bob@example.com")
    await gate.post_send(A, "j2", status=status, attempt=1)
    verdict, why = await check(redis, A, "j2", "bob@example.com", "email")
    assert verdict is Handover.NOT_SENT and verdict.ignored
    assert f"not sent (status {status})" in why


async def test_an_unknown_job_is_neither_applied_to_a_job_nor_ignored(gate, redis):
    await _claim(gate, "j3", "bob@example.com")
    for account, job in ((A, "j-none"), ("acct_other", "j3")):
        verdict, _ = await check(redis, account, job, "bob@example.com", "email")
        assert verdict is Handover.UNKNOWN_JOB and not verdict.ignored


async def test_sms_recipients_compare_in_their_canonical_form(gate, redis):
    await _claim(gate, "j4", "+852 9123 4567", channel="sms")
    assert (await check(redis, A, "j4", "+85291234567", "sms"))[0] is Handover.SENT
    assert (await check(redis, A, "j4", "91234567", "sms", region="HK"))[0] is Handover.SENT
    assert (await check(redis, A, "j4", "+85291234568", "sms"))[0] is \
        Handover.OTHER_RECIPIENT


@pytest.mark.backends
async def test_a_batch_of_events_is_one_round_trip_on_either_redis(gate, redis):
    """Jobs of several accounts (several slots of a cluster), one answer each, in order."""
    run = uuid.uuid4().hex[:8]  # the cluster is not wiped between tests
    accounts = [f"acct_ho{i}_{run}" for i in range(6)]
    for account in accounts:
        decision = await gate.pre_send(account, "j", owner="w", redelivered=False,
                                       expired=False, attempt=1, address="bob@example.com")
        assert decision.claimed
    await gate.post_send(accounts[1], "j", status="rejected", attempt=1)
    queries = [Query(a, "j", "eve@example.com" if a == accounts[2] else "bob@example.com",
                     "email") for a in accounts] + [Query(f"acct_none_{run}", "j", None, "email")]
    verdicts = [v for v, _ in await check_all(redis, queries)]
    assert verdicts == [Handover.SENT, Handover.NOT_SENT, Handover.OTHER_RECIPIENT,
                        Handover.SENT, Handover.SENT, Handover.SENT, Handover.UNKNOWN_JOB]
