"""The pre-send verdicts over the real Lua and a real Redis (one round trip each), on a
single Redis and on a Redis Cluster (``backends``): each test's account, addresses and job ids
are its own (``names``), as the cluster is shared and never flushed."""

from __future__ import annotations

import json

import pytest

from suppression.gate import Counts, Gate
from suppression.held import HeldStore
from suppression.reputation import Policy
from suppression.store import AccountStore, ConsentStore, PrefsStore, SuppressionStore

pytestmark = pytest.mark.backends
_n = iter(range(10**9))
A = ""  # this test's account (set by the autouse fixture below)
N = None  # this test's names


@pytest.fixture(autouse=True)
def _own_names(names, monkeypatch):
    """This test's account, and its recipients: ``mail("bob@example.com")``."""
    monkeypatch.setitem(globals(), "A", names.account("acct_g"))
    monkeypatch.setitem(globals(), "N", names)


def mail(address: str) -> str:
    return N.email(address)


def other(base: str = "acct_other") -> str:
    return N.account(base)


def spaced(number: str) -> str:
    """``+85291234567`` as ``+852 9123 4567`` (another spelling of the same number)."""
    return f"{number[:4]} {number[4:8]} {number[8:]}"


async def check(gate, *, account=None, redelivered=False, **job):
    """One delivery's pre-send (each call its own delivery: its own claim owner)."""
    job.setdefault("address", mail("rcpt@example.com"))
    return await gate.pre_send(account or A, job.pop("job_id", f"j{next(_n)}"),
                               owner=f"w#{next(_n)}",
                               redelivered=redelivered, expired=False, attempt=1, **job)


async def test_a_clean_job_is_claimed(gate):
    d = await check(gate, job_id="j-clean")
    assert (d.verdict, d.claimed) == ("send", True)
    assert (await gate.job_state(A, "j-clean"))["st"] == "S"


async def test_blocked_and_suspended_accounts_hold_jobs_and_nothing_is_final(gate, redis):
    """``held`` writes nothing; the job held is ``held`` (not final): the same id again is
    evaluated again, held while the account stays blocked, sent once it is not."""
    await redis.hset("outbox:{acct:" + A + "}:state", "state", "blocked")
    d = await check(gate, job_id="j-b")
    assert (d.verdict, d.reason, d.claimed) == ("held", "account_blocked", False)
    assert await gate.job_state(A, "j-b") == {}
    store = HeldStore(redis, hold_seconds=60, max_jobs=10, max_bytes=10_000,
                      idempotency_ttl=3600)
    held = await store.hold(A, "j-b", channel="email", category="marketing", body=b"{}",
                            attempt=1)
    assert (held.outcome, held.reason) == ("held", "account_blocked")
    assert (await gate.job_state(A, "j-b"))["st"] == "held"
    again = await check(gate, job_id="j-b", redelivered=True)
    assert (again.verdict, again.reason) == ("held", "account_blocked")  # not "done"
    await redis.hset("outbox:{acct:" + A + "}:state", "state", "suspended")
    assert (await check(gate)).reason == "account_suspended"
    await redis.hset("outbox:{acct:" + A + "}:state", "state", "active")
    assert (await check(gate, job_id="j-b")).verdict == "send"


async def test_suppression_scopes(gate, redis):
    store = SuppressionStore(redis)
    await store.add(mail("Gone@Example.com"), channel="email", reason="hard_bounce")
    await store.add(mail("left@example.com"), channel="email", reason="unsubscribe",
                    account_id=A)
    # global: every account, found by the pipelined read, settled by the caller
    for account in (A, other()):
        d = await check(gate, account=account, address=mail("gone@EXAMPLE.com"))
        assert (d.verdict, d.reason, d.settle) == ("suppressed", "hard_bounce", True)
    # per account: refused by the script for that account only
    d = await check(gate, address=mail("LEFT@example.com"))
    assert (d.verdict, d.reason, d.settle) == ("suppressed", "unsubscribe", False)
    assert (await check(gate, account=other(),
                        address=mail("left@example.com"))).verdict == "send"
    # channel matters
    assert (await check(gate, channel="sms", address=N.phone(0))).verdict == "send"


async def test_marketing_consent_opt_in_and_opt_out(gate, redis):
    consent = ConsentStore(redis)
    d = await check(gate, category="marketing", address=mail("m@example.com"))
    assert (d.verdict, d.reason) == ("no_consent", "no_consent")
    await consent.grant(A, mail("m@example.com"), channel="email", source="form")
    assert (await check(gate, category="marketing",
                        address=mail("m@example.com"))).verdict == "send"
    await consent.revoke(A, mail("m@example.com"), channel="email")
    d = await check(gate, category="marketing", address=mail("m@example.com"))
    assert (d.verdict, d.reason) == ("no_consent", "revoked")
    # opt-out accounts send marketing unless revoked
    await AccountStore(redis, Policy()).configure(A, consent_mode="opt_out")
    assert (await check(gate, category="marketing",
                        address=mail("new@example.com"))).verdict == "send"
    assert (await check(gate, category="marketing",
                        address=mail("m@example.com"))).verdict == "no_consent"
    # transactional mail never needs consent
    assert (await check(gate, address=mail("m@example.com"))).verdict == "send"


async def test_notification_preferences(gate, redis):
    prefs = PrefsStore(redis)
    await prefs.set(A, spaced(N.phone(0)), topic="meeting", channel="sms", on=False)
    job = {"channel": "sms", "category": "notification", "address": N.phone(0)}
    d = await check(gate, topic="meeting", **job)
    assert (d.verdict, d.reason) == ("suppressed", "preference")
    assert (await check(gate, topic="task", **job)).verdict == "send"
    await prefs.set(A, N.phone(0), topic="meeting", channel="sms", on=True)
    assert (await check(gate, topic="meeting", **job)).verdict == "send"


async def test_dnc_register_applies_to_marketing_sms_without_consent(redis):
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(consent_mode="opt_out"))
    await SuppressionStore(redis).add_dnc([N.phone(1)], source="test")
    d = await check(gate, channel="sms", category="marketing",
                    address=spaced(N.phone(1))[5:])  # without +852
    assert (d.verdict, d.reason) == ("suppressed", "dnc_register")
    assert (await check(gate, channel="sms", category="notification", topic="task",
                        address=N.phone(1))).verdict == "send"
    # UEMO s.11(2): the registered user's consent lifts the register
    await ConsentStore(redis).grant(A, N.phone(1), channel="sms")
    d = await check(gate, channel="sms", category="marketing", address=N.phone(1))
    assert (d.verdict, d.consent) == ("send", "granted")


async def test_rate_limit_is_last_and_refusals_take_no_token(redis):
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=1, burst=2))
    for _ in range(5):  # refused jobs do not consume tokens
        assert (await check(gate, category="marketing")).verdict == "no_consent"
    assert [(await check(gate)).verdict for _ in range(3)] == ["send", "send", "rate_limited"]
    d = await check(gate, job_id="j-rl")
    assert d.verdict == "rate_limited" and 0 < d.wait_ms <= 1000
    assert await gate.job_state(A, "j-rl") == {}  # not claimed, not an attempt


async def test_throttled_accounts_get_the_reduced_rate(redis):
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=100, burst=50,
                                                           throttle_factor=0.1))
    await redis.hset("outbox:{acct:" + A + "}:state", "state", "throttled")
    verdicts = [(await check(gate)).verdict for _ in range(6)]
    assert verdicts == ["send"] * 5 + ["rate_limited"]  # burst 50 * 10 % = 5


async def test_a_global_refusal_gives_its_token_back(redis):
    gate = Gate(redis, idempotency_ttl=3600, policy=Policy(rate=0.001, burst=1))
    await SuppressionStore(redis).add(mail("x@example.com"), channel="email", reason="complaint")
    d = await check(gate, job_id="j-g", address=mail("x@example.com"))
    assert d.settle and d.claimed
    await gate.post_send(A, "j-g", status="suppressed", attempt=1, reason=d.reason, refund=True)
    assert (await gate.job_state(A, "j-g"))["st"] == "suppressed"
    assert (await check(gate)).verdict == "send"  # the token came back


async def test_a_hard_bounce_suppresses_the_address_globally(gate, redis):
    await gate.post_send(A, "j-h", status="bounced", attempt=1, reason="userunknown",
                         counts=Counts(sends=1, hard=1), address=mail("Dead@Example.com"))
    [entry] = await SuppressionStore(redis).check(mail("dead@example.com"),
                                                  account_id=other("acct_x"))
    assert (entry["scope"], entry["reason"], entry["source"]) == ("global", "hard_bounce",
                                                                "job:j-h")


async def test_scripts_are_reloaded_after_a_redis_script_flush(gate, redis, monkeypatch):
    """NOSCRIPT (a Redis restart or SCRIPT FLUSH) loads the script and runs the batch again.
    A script the server has never seen stands for a flushed cache: SCRIPT FLUSH would empty it
    for every run sharing the server."""
    import hashlib
    import uuid

    from suppression.gate import PRE_SEND

    assert (await check(gate)).verdict == "send"
    source = f"{PRE_SEND.source}\n-- {uuid.uuid4().hex}\n"
    monkeypatch.setattr(PRE_SEND, "source", source)
    monkeypatch.setattr(PRE_SEND, "sha", hashlib.sha1(source.encode()).hexdigest())
    assert await redis.script_exists(PRE_SEND.sha) == [False]
    assert (await check(gate)).verdict == "send"
    assert await redis.script_exists(PRE_SEND.sha) == [True]


async def test_an_error_reply_is_raised_and_the_connection_stays_usable(gate, redis):
    from redis.exceptions import ResponseError

    from suppression import keys

    bad = keys.global_suppression("email", mail("bad@example.com"))
    await redis.set(bad, "not a hash")
    try:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            await check(gate, address=mail("bad@example.com"))
        for _ in range(3):  # every reply of that batch was read: the next ones line up
            assert (await check(gate)).verdict == "send"
    finally:  # a shared cluster's listings must not meet it
        await redis.delete(bad)


async def test_a_cancelled_call_does_not_leave_replies_on_a_pooled_connection(gate, redis):
    import asyncio

    tasks = [asyncio.create_task(check(gate)) for _ in range(20)]
    await asyncio.sleep(0)
    for t in tasks[::2]:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    verdicts = [(await check(gate, job_id=f"after-{i}")).verdict for i in range(10)]
    assert verdicts == ["send"] * 10


async def test_the_claim_keeps_a_digest_of_the_recipient_that_sent_to_compares(gate, redis):
    from suppression.gate import recipient_digest, sent_to

    await check(gate, job_id="j-rc", address=mail("Bob@Example.com"))
    state = await gate.job_state(A, "j-rc")
    assert state["rc"] == recipient_digest("email", mail("bob@example.com"))
    assert "bob" not in state["rc"]  # a digest, not the address
    assert await sent_to(redis, A, "j-rc", mail("bob@EXAMPLE.com")) is None
    eve = mail("eve@example.com")
    assert f"not sent to {eve}" in await sent_to(redis, A, "j-rc", eve)
    assert "no record" in await sent_to(redis, A, "j-none", mail("bob@example.com"))
    assert "no record" in await sent_to(redis, other(), "j-rc", mail("bob@example.com"))
    assert "names no recipient" in await sent_to(redis, A, "j-rc", None)
    await gate.post_send(A, "j-rc", status="sent", attempt=1)  # the digest stays
    assert await sent_to(redis, A, "j-rc", mail("bob@example.com")) is None


async def test_a_job_refused_before_the_send_was_not_sent_to_anyone(gate, redis):
    from suppression.gate import sent_to

    await SuppressionStore(redis).add(mail("bob@example.com"), channel="email",
                                      reason="unsubscribe", account_id=A)
    await check(gate, job_id="j-refused", address=mail("bob@example.com"))
    assert "was not sent (status suppressed)" in await sent_to(redis, A, "j-refused",
                                                               mail("bob@example.com"))


async def test_the_claim_keeps_the_job_s_metadata_within_its_bound(gate):
    """Kept as compact JSON with the claim (``md``), for provider events' status events; one
    over METADATA_MAX_BYTES, or none, is not kept; a refusal keeps nothing."""
    from suppression.gate import METADATA_MAX_BYTES

    small = {"crm_message_id": 991, "name": "Zoë"}
    await check(gate, job_id="j-md", metadata=small)
    kept = (await gate.job_state(A, "j-md"))["md"]
    assert json.loads(kept) == small and " " not in kept
    big = {"blob": "x" * METADATA_MAX_BYTES}
    await check(gate, job_id="j-md-big", metadata=big)
    await check(gate, job_id="j-md-none", metadata={})
    for job in ("j-md-big", "j-md-none"):
        assert "md" not in await gate.job_state(A, job)
    edge = {"b": "é" * ((METADATA_MAX_BYTES - 8) // 2)}  # 4096 bytes of UTF-8 exactly
    assert len(json.dumps(edge, separators=(",", ":"), ensure_ascii=False).encode()) == 4096
    await check(gate, job_id="j-md-edge", metadata=edge)
    assert json.loads((await gate.job_state(A, "j-md-edge"))["md"]) == edge
    await gate.pre_send(A, "j-md-exp", owner="w", redelivered=False, expired=True, attempt=1,
                        address=mail("rcpt@example.com"), metadata=small)
    assert (await gate.job_state(A, "j-md-exp"))["st"] == "expired"
    assert "md" not in await gate.job_state(A, "j-md-exp")


async def test_a_provider_event_reads_the_kept_metadata_in_its_round_trip(gate):
    await check(gate, job_id="j-md-ev", metadata={"k": [1, 2]})
    recorded = await gate.post_send(A, "j-md-ev", status="delivered", attempt=0,
                                    event_id="ev-md-1")
    assert (recorded.applied, json.loads(recorded.metadata)) == (1, {"k": [1, 2]})
    plain = await gate.post_send(A, "j-md-ev", status="delivered", attempt=0)
    assert plain.metadata == ""  # the worker's own post-send does not read it


async def test_a_duplicate_is_refused_a_redelivery_takes_over_a_done_job_is_done(gate):
    assert (await check(gate, job_id="j-dup")).verdict == "send"
    dup = await check(gate, job_id="j-dup")  # the same id published twice, the first live
    assert (dup.verdict, dup.claimed) == ("duplicate", False)
    taken = await check(gate, job_id="j-dup", redelivered=True)  # the holder died mid-send
    assert (taken.verdict, taken.claimed) == ("send", True)
    await gate.post_send(A, "j-dup", status="sent", attempt=1, counts=Counts(sends=1),
                         provider="smtp", provider_message_id="Q1")
    for redelivered in (False, True):
        done = await check(gate, job_id="j-dup", redelivered=redelivered)
        assert (done.verdict, done.status, done.provider_message_id) == ("done", "sent", "Q1")


async def test_hard_bounces_throttle_then_block_the_account(redis):
    policy = Policy(rate=1000, burst=1000, min_bounce_volume=20, early_bounce_volume=8)
    gate = Gate(redis, idempotency_ttl=3600, policy=policy)
    moves = []
    for i in range(40):
        d = await check(gate, job_id=f"j-rep-{i}")
        if d.verdict == "held":
            break
        hard = i % 2 == 0  # half of them unknown users
        recorded = await gate.post_send(
            A, f"j-rep-{i}", status="bounced" if hard else "sent", attempt=1,
            counts=Counts(sends=1, hard=int(hard)), reason="userunknown" if hard else None,
            address=mail(f"r{i}@example.com") if hard else "")
        if recorded.transition:
            moves.append((recorded.transition.from_state, recorded.transition.to_state))
    assert moves and moves[-1][1] == "blocked"
    assert (d.verdict, d.reason) == ("held", "account_blocked")
    [entry] = await SuppressionStore(redis).check(mail("r0@example.com"))
    assert entry["reason"] == "hard_bounce"
    store = AccountStore(redis, policy)
    assert (await store.show(A))["state"] == "blocked"
    change = await store.support(A, "unblock", actor="alice", reason="cleaned the list")
    assert (change.from_state, change.to_state) == ("blocked", "active")
    assert (await check(gate)).verdict == "send"
