"""Stateful test over the real Lua (post_send.lua, support.lua) on a real Redis: random
sends, hard bounces, complaints on both channels and support actions. Invariants: nothing
but a support action moves an account out of ``blocked`` or ``suspended``; every automatic
state (``warning`` included) is the one the Python mirror of the rule predicts; support
actions are refused when they do not apply, and unblock/unsuspend start afresh."""

from __future__ import annotations

import itertools
import uuid

import redis
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from suppression import channels, keys
from suppression.gate import POST_SEND, Counts, Gate
from suppression.reputation import STATES, Policy, Rates, sum_buckets
from suppression.store import _SUPPORT, support_call

# small volumes so that transitions happen within a few dozen steps
POLICY = Policy(min_bounce_volume=20, early_bounce_volume=8, min_complaint_volume=40,
                early_complaint_volume=10, throttle_complaint=0.02, block_complaint=0.06)
KINDS = {"sent": Counts(sends=1), "hard": Counts(sends=1, hard=1),
         "complaint": Counts(complaints=1)}


def test_only_support_lifts_a_block_or_suspension(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    post, support = r.script_load(POST_SEND.source), r.script_load(_SUPPORT.source)
    gate = Gate(None, idempotency_ttl=3600, policy=POLICY)  # type: ignore[arg-type]
    jobs = itertools.count()

    class Account(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.account = f"acct_{uuid.uuid4().hex[:8]}"

        def state(self) -> str:
            return r.hget(keys.state(self.account), "state") or "active"

        def level(self, channel: str) -> int:
            now = int(r.time()[0])
            sums = sum_buckets(r.hgetall(keys.reputation(self.account, channel)), now=now,
                               bucket=POLICY.reputation_bucket,
                               window=POLICY.reputation_window)
            rates = Rates(sums["s"], sums["h"], sums["c"], POLICY.reputation_window, POLICY)
            return max(rates.bounce_level, rates.complaint_level)

        def warning(self, channel: str) -> bool:
            now = int(r.time()[0])
            sums = sum_buckets(r.hgetall(keys.reputation(self.account, channel)), now=now,
                               bucket=POLICY.reputation_bucket,
                               window=POLICY.reputation_window)
            return Rates(sums["s"], sums["h"], sums["c"], POLICY.reputation_window,
                         POLICY).warning

        @rule(channel=st.sampled_from(channels.names()), kind=st.sampled_from(sorted(KINDS)),
              n=st.integers(1, 25))
        def outcomes(self, channel: str, kind: str, n: int) -> None:
            for _ in range(n):
                before = self.state()
                k, a = gate.post_send_call(self.account, f"j{next(jobs)}", status="sent",
                                           attempt=1, channel=channel, reason="userunknown",
                                           counts=KINDS[kind])
                reply = r.evalsha(post, len(k), *k, *a)
                after = self.state()
                if before in ("blocked", "suspended"):
                    assert after == before, "only a support action lifts this"
                    continue
                mine = self.level(channel)
                other = max(self.level(c) for c in channels.names() if c != channel)
                warned = any(self.warning(c) for c in channels.names())
                expected = ("blocked" if mine == 2 else
                            "throttled" if max(mine, other) >= 1 else
                            "warning" if warned else "active")
                assert after == expected
                assert (int(reply[0]) == 1) == (after != before)

        @rule(action=st.sampled_from(["unblock", "suspend", "unsuspend"]))
        def support_action(self, action: str) -> None:
            before = self.state()
            k, a = support_call(self.account, action, actor="tester", reason="because",
                                probation=3600)
            reply = r.evalsha(support, len(k), *k, *a)
            applies = {"unblock": before == "blocked", "unsuspend": before == "suspended",
                       "suspend": before != "suspended"}[action]
            assert (reply[0] == "ok") == applies
            if not applies:
                assert self.state() == before
                return
            assert self.state() == ("suspended" if action == "suspend" else "active")
            if action != "suspend":  # probation: counters start afresh
                assert all(self.level(c) == 0 for c in channels.names())
                assert r.hget(keys.state(self.account), "probation_until")
            last = r.xrevrange(keys.audit(self.account), count=1)[0][1]
            assert (last["actor"], last["action"], last["from"]) == ("tester", action, before)

        @invariant()
        def known_state(self) -> None:
            assert self.state() in STATES

    run_state_machine_as_test(Account, settings=settings(
        max_examples=60, stateful_step_count=25, deadline=None))
    r.close()
