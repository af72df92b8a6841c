"""The Lua scripts take named arguments: a reputation parameter added to its declaration alone
(here in-process: a :class:`Policy` subclass with one throwaway field per script, appended
after the others, so every argument after the parameters moves) reaches both scripts by
name, may be overridden per account, and both scripts still do exactly what they did — on a
single Redis and on the Redis Cluster (``backends``).

The statuses are declared once (``suppression/statuses.py``): the ranking the post-send script
compares is generated from that table, and a late lower-ranked status does not overwrite a
higher one (checked here against the real script, for every pair)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from config.reputation import Policy, _param, declared
from sender.connect import redis_client
from suppression import keys, statuses
from suppression.gate import (
    POST_SEND,
    PRE_SEND,
    Counts,
    Gate,
    post_send_args,
    pre_send_args,
    scripts_for,
)
from suppression.replies import text
from tests.conftest import Names

pytestmark = [pytest.mark.integration, pytest.mark.backends]


@dataclass(frozen=True, slots=True)
class Probed(Policy):
    """The declaration with a throwaway parameter for each script (nothing else changed)."""

    probe_gap: float = _param(0.25, "a throwaway pre-send parameter", gt=0, script="pre_send")
    probe_mode: str = _param("calm", "a throwaway post-send parameter", script="post_send")


@pytest.fixture
async def redis(backend_redis_url: tuple[str, bool]) -> Any:
    url, cluster = backend_redis_url
    client = redis_client(url, cluster=cluster)
    yield client
    await client.aclose()


def test_the_new_parameters_are_declared_and_passed_by_name() -> None:
    assert [p.name for p in declared(Probed)][-2:] == ["probe_gap", "probe_mode"]
    pre, post = scripts_for(Probed)
    assert (pre.sha, post.sha) != (PRE_SEND.sha, POST_SEND.sha)  # the prelude names them
    assert "probe_gap = tonumber(ARGV[" in pre.source
    assert "'probe_mode'" in post.source  # read from the account's cfg hash as well
    # the Lua files themselves were not edited: only the generated prelude differs
    assert pre.source.split("local job = KEYS[1]")[1] == \
        PRE_SEND.source.split("local job = KEYS[1]")[1]


@pytest.mark.parametrize("script", ["pre_send", "post_send"])
async def test_each_script_reads_the_new_parameter_and_its_override(
        redis: Any, names: Names, script: str) -> None:
    """The generated prelude, run on the server: the default, then the account's override."""
    arguments = (pre_send_args if script == "pre_send" else post_send_args)(Probed)
    account = names.account("acct_probe")
    probe = arguments.prelude() + "return cjson.encode((policy(KEYS[1])))"
    own = {n: "0" if kind != "str" else "" for n, kind in arguments.names}
    argv = arguments.argv(own, Probed(), ["tail"])
    name, override, default = (("probe_gap", "0.75", 0.25) if script == "pre_send"
                               else ("probe_mode", "wild", "calm"))
    cfg = keys.config(account)
    assert json.loads(await redis.eval(probe, 1, cfg, *argv))[name] == default
    await redis.hset(cfg, name, override)
    got = json.loads(await redis.eval(probe, 1, cfg, *argv))
    assert str(got[name]) == override
    assert set(got) == {p.name for p in arguments.params}


async def _pre_send_story(redis: Any, names: Names, policy: Policy) -> list[Any]:
    """Claims that read rate, burst and consent_mode (parameters; consent_mode overridden by
    the account), the owner and expiry (arguments before them) and the metadata's pieces
    (the trailing list after them)."""
    gate = Gate(redis, idempotency_ttl=600, policy=policy)
    account = names.account("acct_pre")
    metadata = {"note": "x" * 300}  # several pieces (64 bytes each): the trailing list
    story: list[Any] = []
    for i in range(3):  # burst 2: the third is rate limited
        d = await gate.pre_send(account, f"j{i}", owner=f"w{i}", redelivered=False,
                                expired=False, attempt=1, category="marketing",
                                address=names.email(f"r{i}@example.com"), metadata=metadata)
        story.append((d.verdict, d.reason, d.sender))
    story.append(json.loads((await gate.job_state(account, "j0"))["md"]) == metadata)
    await redis.hset(keys.config(account), "consent_mode", "opt_in")  # an account's override
    d = await gate.pre_send(account, "j3", owner="w3", redelivered=False, expired=False,
                            attempt=1, category="marketing", address=names.email("q@x.com"))
    story.append(d.verdict)
    d = await gate.pre_send(account, "j4", owner="w4", redelivered=False, expired=True,
                            attempt=1, address=names.email("late@example.com"))
    story.append((d.verdict, (await gate.job_state(account, "j4"))["st"]))
    return story


async def _post_send_story(redis: Any, names: Names, policy: Policy) -> list[Any]:
    """Hard bounces that block at the early volume (parameters), with the other channel's
    level read from the trailing list of every channel."""
    gate = Gate(redis, idempotency_ttl=600, policy=policy)
    account = names.account("acct_post")
    await redis.hset(keys.state(account), "lvl:sms", "1")  # the other channel throttled
    story: list[Any] = []
    first = await gate.post_send(account, "j0", status="sent", attempt=1,
                                 counts=Counts(sends=1))
    t = first.transition
    story.append((first.applied, t and (t.from_state, t.to_state, t.reason)))
    for i in range(1, 4):
        r = await gate.post_send(account, f"j{i}", status="bounced", attempt=1,
                                 counts=Counts(sends=1, hard=1), reason="user_unknown")
        t = r.transition
        story.append((r.applied, t and (t.from_state, t.to_state, t.reason, t.sends)))
    late = await gate.post_send(account, "j1", status="sent", attempt=1, provider="smtp",
                                provider_message_id="m1")
    job = await gate.job_state(account, "j1")
    story.append((late.applied, job["st"], job.get("pm")))
    return story


async def test_both_scripts_run_with_the_new_parameter_as_before(
        redis: Any, names: Names) -> None:
    base = dict(rate=0.001, burst=2, consent_mode="opt_out", early_bounce_volume=3,
                min_bounce_volume=50)
    before_pre = await _pre_send_story(redis, names, Policy(**base))
    before_post = await _post_send_story(redis, names, Policy(**base))
    names.suffix += "p"  # the same story on fresh keys, with the extended declaration
    after_pre = await _pre_send_story(redis, names, Probed(**base, probe_gap=9.5))
    after_post = await _post_send_story(redis, names, Probed(**base, probe_mode="odd"))
    assert after_pre == before_pre
    assert after_post == before_post
    # and what that story is: opt_out marketing sent with its sender information, the
    # burst spent, the metadata whole, the override honoured, an expired job refused
    assert [v for v, _, _ in before_pre[:3]] == ["send", "send", "rate_limited"]
    assert before_pre[0][2] == ("", "", "", "")
    assert before_pre[3:] == [True, "no_consent", ("expired", "expired")]
    assert before_post[0] == (1, ("active", "throttled", "other_channel"))
    assert [a for a, _ in before_post[1:4]] == [1, 1, 1]
    moved = [t for _, t in before_post[1:4] if t]
    assert [t[:3] for t in moved] == [("throttled", "blocked", "hard_bounce_rate")]
    assert before_post[4] == (0, "bounced", "m1")  # a late 'sent' ranks below 'bounced'


async def test_the_generated_ranking_orders_every_pair_of_statuses(
        redis: Any, names: Names) -> None:
    """For each pair, the second status is written over the first exactly when its declared
    rank is at least as high."""
    gate = Gate(redis, idempotency_ttl=600)
    account = names.account("acct_rank")
    checked = 0
    for i, held in enumerate(statuses.STATUSES):
        for j, new in enumerate(statuses.STATUSES):
            job = f"j{i}_{j}"
            await gate.post_send(account, job, status=held, attempt=1)
            r = await gate.post_send(account, job, status=new, attempt=2)
            st = text(await redis.hget(keys.job(account, job), "st"))
            moves = statuses.RANK[new] >= statuses.RANK[held]
            assert (r.applied, st) == ((1, new) if moves else (0, held)), (held, new)
            checked += 1
    assert checked == len(statuses.STATUSES) ** 2
