"""Two accounts blast at once through a real worker: the clean one sends everything; the one
with 30 % unknown users is blocked during its blast, its remaining jobs end `blocked` without
reaching the relay, and support lifts the block with the CLI, audited."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from sender.client import Outbox
from tests.integration.helpers import cli_runner, collect, email_job, events, running_worker

pytestmark = pytest.mark.integration
N = 500
UNKNOWN = "550 5.1.1 <{}>: Recipient address rejected: User unknown"


def _jobs() -> tuple[list[dict], list[dict], set[str]]:
    clean = [email_job(account_id="acct_a", to=f"a{i}@example.com") for i in range(N)]
    dirty = [email_job(account_id="acct_b", to=f"b{i}@example.com") for i in range(N)]
    unknown = {j["to"] for i, j in enumerate(dirty) if i % 10 in (1, 4, 7)}  # 30 %
    return clean, dirty, unknown


async def test_dirty_blast_is_blocked_clean_one_is_not(make_settings, smtp_server, amqp_url,
                                                       redis_url, monkeypatch, capsys):
    smtp_url, recorder = smtp_server
    clean, dirty, unknown = _jobs()
    for addr in unknown:
        recorder.replies[addr] = UNKNOWN.format(addr)
    # a high rate so the token bucket stays out of this test; reputation at its defaults
    # (early block from 50 sends on the Wilson lower bound)
    settings = make_settings(smtp_url=smtp_url, account_rate=100000, account_burst=100000)
    ids = {j["id"] for j in clean + dirty}
    async with Outbox(amqp_url) as outbox:
        for a, b in zip(clean, dirty, strict=True):  # interleaved
            await outbox.enqueue(a)
            await outbox.enqueue(b)

    final: dict[str, dict] = {}
    account_events: list[dict] = []

    def done(messages: list) -> bool:
        for e in events(messages[len(final) + len(account_events):]):
            (final.__setitem__(e["id"], e) if e["id"] in ids else account_events.append(e))
        return len(final) >= len(ids)

    async with running_worker(settings):
        await collect(amqp_url, "outbox.status", done, timeout=90)

    a_status = Counter(final[j["id"]]["status"] for j in clean)
    b_status = Counter(final[j["id"]]["status"] for j in dirty)
    print(f"\nA: {dict(a_status)}  B: {dict(b_status)}", file=sys.__stderr__)
    assert a_status == {"sent": N}
    assert set(b_status) == {"sent", "bounced", "held"}
    assert b_status["held"] >= 100  # held while blocked: kept for support to decide
    blocked = [j for j in dirty if final[j["id"]]["status"] == "held"]
    assert {final[j["id"]]["reason"] for j in blocked} == {"account_blocked"}
    assert all(recorder.by_rcpt(j["to"]) == [] for j in blocked)  # never reached the relay
    # the automatic block itself is a status event: id <account>:<audit id>
    assert {e["account_id"] for e in account_events} == {"acct_b"}  # the clean one never moved
    [block] = [e for e in account_events if e["status"] == "blocked"]
    assert (block["status"], block["reason"], block["channel"]) == \
        ("blocked", "hard_bounce_rate", "email")
    assert block["id"].startswith("acct_b:")

    run = cli_runner(monkeypatch, amqp_url, redis_url)
    capsys.readouterr()
    assert await run("accounts", "show", "acct_b", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "blocked"
    auto = shown["recent_transitions"][0]
    print(f"B blocked after {auto['sends']} sends with {auto['hard']} hard bounces "
          f"(Wilson lower bound {auto['bounce_lb']})", file=sys.__stderr__)
    assert 50 <= int(auto["sends"]) < 200

    # the blast held while blocked is dropped with the unblock
    assert await run("accounts", "unblock", "acct_b", "--reason", "list cleaned, ticket 4711",
                     "--actor", "alice@support", "--held", "discard") == 0
    capsys.readouterr()
    assert await run("accounts", "show", "acct_b", "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["state"] == "active" and shown["probation_until"]
    assert shown["rates"]["email"]["sends"] == 0  # probation: counters start afresh

    assert await run("audit", "acct_b", "--json") == 0
    audit = json.loads(capsys.readouterr().out)
    assert [(r["action"], r["from"], r["to"]) for r in audit[:3]] == [
        ("held.discard", "", ""), ("unblock", "blocked", "active"),
        ("auto", "active", "blocked")]
    assert audit[0]["jobs"] == str(b_status["held"])
    assert (audit[1]["actor"], audit[1]["reason"]) == ("alice@support",
                                                       "list cleaned, ticket 4711")
    assert (audit[2]["actor"], audit[2]["reason"]) == ("system", "hard_bounce_rate")
    # the unblock is announced as account.active
    got = await collect(amqp_url, "outbox.status", lambda m: len(m) >= 1, timeout=10)
    assert got[0].routing_key == "account.active"
    assert events(got)[0]["detail"] == "alice@support: list cleaned, ticket 4711"

    assert await run("accounts", "show", "acct_a", "--json") == 0
    a_shown = json.loads(capsys.readouterr().out)
    assert a_shown["state"] == "active" and a_shown["rates"]["email"]["sends"] == N
