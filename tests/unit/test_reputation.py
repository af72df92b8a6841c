"""The Wilson rule: known values, and the Lua in post_send.lua agrees with the Python mirror."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suppression.reputation import Policy, level, wilson_lower

LUA = (Path(__file__).resolve().parents[2] / "suppression/lua/post_send.lua").read_text()
SNIPPET = re.search(r"-- BEGIN wilson[^\n]*\n(.*)-- END wilson", LUA, re.S).group(1)
PROBE = ("local z = tonumber(ARGV[3])\n" + SNIPPET + """
local k, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local lvl = level(k, n, tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]))
return {string.format('%.17g', wilson(k, n, z)), lvl}
""")


def test_known_values():
    assert wilson_lower(0, 0) == 0.0
    assert wilson_lower(0, 100) == 0.0
    # 15 of 50 (30 %): 95 % sure the rate is above 19 %
    assert wilson_lower(15, 50) == pytest.approx(0.1910, abs=1e-4)
    assert wilson_lower(50, 100) == pytest.approx(0.4038, abs=1e-4)
    assert wilson_lower(100, 100) == pytest.approx(0.9630, abs=1e-4)


def test_the_rule_blocks_clear_evidence_early_and_spares_noise():
    p = Policy()
    bounce = {"min_n": p.min_bounce_volume, "early_n": p.early_bounce_volume,
              "throttle": p.throttle_bounce, "block": p.block_bounce}
    assert level(15, 50, **bounce) == 2  # a 30 % dirty blast: blocked at 50 sends
    assert level(15, 49, **bounce) == 0  # under the early volume nothing acts
    assert level(8, 60, **bounce) == 0  # 13 % of 60: not sure yet (lb 6.9 %)
    assert level(30, 200, **bounce) == 2  # 15 % of 200: lb 10.7 %
    assert level(20, 200, **bounce) == 1  # 10 % of 200: lb 6.6 %, throttled, not blocked
    assert level(10, 200, **bounce) == 0  # 5 % raw, lb 2.7 %: noise, not a throttle
    assert level(5000, 50000, **bounce) == 1  # exactly 10 % raw: lb just under the block line


@pytest.fixture(scope="module")
def probe(redis_session_url):
    client = redis.Redis.from_url(redis_session_url)  # runs a script only: writes nothing
    sha = client.script_load(PROBE)
    yield lambda *args: client.evalsha(sha, 0, *args)
    client.close()


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(0, 2_000_000), frac=st.floats(0, 1.5), z=st.sampled_from([1.645, 1.96, 2.576]),
       min_n=st.integers(1, 5000), early_n=st.integers(1, 5000),
       lines=st.tuples(st.floats(0.0001, 0.5), st.floats(0.0001, 0.5)))
def test_lua_and_python_agree(probe, n, frac, z, min_n, early_n, lines):
    k = math.floor(n * frac)
    throttle, block = sorted(lines)
    lb, lvl = probe(k, n, repr(z), min_n, early_n, repr(throttle), repr(block))
    assert float(lb) == pytest.approx(wilson_lower(k, n, z), rel=1e-12, abs=1e-15)
    assert lvl == level(k, n, min_n=min_n, early_n=early_n, throttle=throttle, block=block, z=z)


def test_running_totals_follow_the_window(redis_url):
    """post_send.lua keeps running totals; when buckets leave the window they are dropped and
    the totals recomputed: at every step they equal the sum of the buckets in the window."""
    import time as _time

    import redis as _redis

    from suppression import keys
    from suppression.gate import POST_SEND, Counts, Gate
    from suppression.reputation import Policy, sum_buckets

    r = _redis.Redis.from_url(redis_url, decode_responses=True)
    policy = Policy(reputation_bucket=1, reputation_window=2)
    # no Redis: only post_send_call, which builds keys and arguments without I/O, is used
    gate = Gate(None, idempotency_ttl=60, policy=policy)  # type: ignore[arg-type]
    sha = r.script_load(POST_SEND.source)
    rep = keys.reputation("acct_win", "email")

    def outcome(counts: Counts) -> None:
        k, a = gate.post_send_call("acct_win", "j", status="", attempt=1, counts=counts)
        r.evalsha(sha, len(k), *k, *a)

    def check() -> dict:
        fields = r.hgetall(rep)
        now = int(r.time()[0])
        mirror = sum_buckets(fields, now=now, bucket=1, window=2)
        assert (int(fields["S"]), int(fields["H"])) == (mirror["s"], mirror["h"])
        return mirror

    for _ in range(5):
        outcome(Counts(sends=1, hard=1))
    assert check() == {"s": 5, "h": 5, "c": 0}
    _time.sleep(3.2)  # every bucket has left the 2 s window
    outcome(Counts(sends=1))
    assert check() == {"s": 1, "h": 0, "c": 0}
    assert not [f for f in r.hgetall(rep) if f.startswith("h:")]  # expired buckets dropped
    r.close()
